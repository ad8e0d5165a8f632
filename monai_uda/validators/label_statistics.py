"""Do the predicted structures look like the source labels' structures? (source labels only)

Shape and size priors from the labelled source domain are the one piece of label knowledge that carries
over a scanner shift; Bateson, Kervadec, Dolz, Lombaert and Ben Ayed, "Source-Relaxed Domain Adaptation
for Image Segmentation", MICCAI 2020, constrain the target prediction's class sizes to such a prior. Here
the prior scores a candidate instead:

- ``foreground_fraction``: per foreground class, the fraction of target pixels predicted as that class
  against the fraction of labelled source pixels; the score is ``-mean_c |log((f_pred + eps) / (f_src + eps))|``
  (0 = the same fractions; an empty prediction of a present class costs about ``log(f_src / eps)``).
- ``component_sizes``: per foreground class, the 1-D Wasserstein distance
  (:func:`scipy.stats.wasserstein_distance`) between the log sizes (pixels) of the connected components
  (:func:`scipy.ndimage.label`, face connectivity) of the prediction and of the source labels, negated and
  averaged over the classes that the source labels contain. A class with source components and no
  predicted component scores ``-inf``.

:func:`source_label_statistics` computes the reference once, from **source** labels. Sizes are counted in
pixels, so source and target must share the pixel spacing (resample first) for ``component_sizes`` to
mean anything. Pixels labelled ``ignore_index`` are left out of the fractions and are not structures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import wasserstein_distance

from monai_uda.utils import IGNORE_INDEX

from .predictions import Candidate, Predictions
from .registry import register_validator

__all__ = ["LabelStatistics", "source_label_statistics", "label_map_statistics", "foreground_fraction_score",
           "component_size_score"]


@dataclass
class LabelStatistics:
    """Class fractions and component sizes of a set of label maps.

    Attributes:
        num_classes: background included.
        class_fractions: ``(num_classes - 1,)``, each foreground class's share of the counted pixels.
        log_component_sizes: per foreground class, the natural log of every connected component's size.
    """

    num_classes: int
    class_fractions: np.ndarray
    log_component_sizes: list[np.ndarray]


def label_map_statistics(label_maps: Sequence[Any], num_classes: int,
                         ignore_index: int | None = IGNORE_INDEX) -> LabelStatistics:
    """:class:`LabelStatistics` of spatial label maps ``(*spatial)`` (no channel axis)."""
    counts = np.zeros(num_classes, dtype=np.float64)
    sizes: list[list[np.ndarray]] = [[] for _ in range(num_classes - 1)]
    for m in label_maps:
        m = np.asarray(torch.as_tensor(m).cpu()).astype(np.int64)
        kept = m[m != ignore_index] if ignore_index is not None else m.ravel()
        if kept.size and (kept.min() < 0 or kept.max() >= num_classes):
            raise ValueError(f"label values must lie in [0, {num_classes}) or be {ignore_index}, "
                             f"got {kept.min()}..{kept.max()}")
        counts += np.bincount(kept.ravel(), minlength=num_classes)[:num_classes]
        for c in range(1, num_classes):
            components, n = ndimage.label(m == c)
            if n:
                sizes[c - 1].append(np.bincount(components.ravel())[1:])
    total = counts.sum()
    fractions = counts[1:] / total if total else np.zeros(num_classes - 1)
    logs = [np.log(np.concatenate(s)) if s else np.zeros(0) for s in sizes]
    return LabelStatistics(num_classes, fractions, logs)


def source_label_statistics(labels: Sequence[Any], num_classes: int | None = None, spatial_dims: int | None = None,
                            ignore_index: int | None = IGNORE_INDEX) -> LabelStatistics:
    """The reference statistics, from the **source** label maps.

    Args:
        labels: label maps, ``(1, *spatial)`` as MONAI loads them or ``(*spatial)``; tensors or arrays.
        num_classes: background included; default the largest label value + 1 (``ignore_index`` left out).
        spatial_dims: 2 or 3; by default a leading axis of size 1 is taken for the channel axis when the
            map has 3 or more axes.
        ignore_index: a value that is neither counted nor a structure (``None``: every value counts).
    """
    if isinstance(labels, (torch.Tensor, np.ndarray)) or not len(labels):
        raise ValueError("labels must be a non-empty list of label maps")
    maps = []
    for i, label in enumerate(labels):
        m = torch.as_tensor(np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label))
        if (m.ndim == spatial_dims + 1 if spatial_dims else m.ndim >= 3) and m.shape[0] == 1:
            m = m[0]
        if spatial_dims and m.ndim != spatial_dims:
            raise ValueError(f"labels[{i}] has shape {tuple(m.shape)}, "
                             f"not (1, *spatial) with {spatial_dims} spatial axes")
        maps.append(m)
    if num_classes is None:
        kept = [m if ignore_index is None else m[m != ignore_index] for m in maps]
        num_classes = 1 + max(int(k.max()) if k.numel() else 0 for k in kept)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (background and a structure), got {num_classes}")
    return label_map_statistics(maps, num_classes, ignore_index)


def _check(predictions: Predictions, statistics: LabelStatistics | None, name: str) -> LabelStatistics:
    if statistics is None:
        raise ValueError(f"{name} needs source_statistics (source_label_statistics of the source labels)")
    if statistics.num_classes != predictions.num_classes:
        raise ValueError(f"{name}: source_statistics has {statistics.num_classes} classes, "
                         f"the predictions {predictions.num_classes}")
    return label_map_statistics(predictions.argmax, predictions.num_classes, ignore_index=None)


def foreground_fraction_score(predictions: Predictions, statistics: LabelStatistics, eps: float = 1e-6) -> float:
    """Negated mean absolute log-ratio of predicted to source class fractions (0 = equal)."""
    predicted = _check(predictions, statistics, "foreground_fraction_score")
    ratios = np.log((predicted.class_fractions + eps) / (statistics.class_fractions + eps))
    return -float(np.abs(ratios).mean())


def component_size_score(predictions: Predictions, statistics: LabelStatistics) -> float:
    """Negated mean 1-D Wasserstein distance of log component sizes, over the classes the source contains."""
    predicted = _check(predictions, statistics, "component_size_score")
    distances = []
    for src, pred in zip(statistics.log_component_sizes, predicted.log_component_sizes):
        if src.size == 0:
            continue
        distances.append(wasserstein_distance(pred, src) if pred.size else float("inf"))
    if not distances:
        raise ValueError("component_size_score: the source labels contain no foreground component")
    return -float(np.mean(distances))


@register_validator("foreground_fraction", needs={"source_statistics"})
def _foreground_fraction(candidate: Candidate, eps: float = 1e-6) -> float:
    return foreground_fraction_score(candidate.predictions, candidate.source_statistics, eps)


@register_validator("component_sizes", needs={"source_statistics"})
def _component_sizes(candidate: Candidate) -> float:
    return component_size_score(candidate.predictions, candidate.source_statistics)
