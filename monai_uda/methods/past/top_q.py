"""PAST top-q self-training selection and ROI cropping (Dong et al., Algorithm 1 and Sec. 2.2).

Algorithm 1, line 7: "input X_c into S_{k-1} and generate pseudo label y^_c^k with a fixed portion q_k".
Sec. 2.1: "we iteratively generate the pseudo label y^_c using the top q of pixels in segmentation output
y_c with a higher probability". With ``P`` a ``(C, *spatial)`` probability map, ``LP = argmax_c P`` and
``M = max_c P``, for every class ``c`` the ``N_c`` pixels with ``LP = c`` are ranked by ``P_c`` (= ``M``
there) and the top ``floor(q * N_c)`` keep the label ``c``; the others get the ignore value
:data:`monai_uda.utils.IGNORE_INDEX` (255).
Selecting per class keeps rare classes (the cochlea) represented.

Schedule: the paper sets the initial ``q`` to 0.6 and ``K = 2`` rounds; it does not give later portions.
:func:`q_schedule` uses ``q_k = min(q_start + k * q_step, q_max)`` (0-based ``k``) with ``q_step = 0.2``,
``q_max = 1.0`` by default (configurable, or an explicit list of portions).

ROI (Sec. 2.2): the targets lie near the image centre; 2D slices are cropped to ``[W/4 : 3W/4, H/4 : 3H/4]``
and 3D volumes to ``[W/4 : 3W/4, 3H/8 : 3H/4, 0 : D]`` (array axes 0, 1, 2 of an RAS volume).
:func:`roi_crop` / :func:`roi_crop_transform` make that an optional preprocessing step with any fractions.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Iterable, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import Lambdad, SpatialCrop

from monai_uda.utils import IGNORE_INDEX

__all__ = [
    "DEFAULT_Q_START",
    "DEFAULT_ROUNDS",
    "PAST_ROI_2D",
    "PAST_ROI_3D",
    "q_schedule",
    "top_q_select",
    "TopQSelector",
    "DatasetTopQSelector",
    "roi_box",
    "roi_crop",
    "roi_crop_transform",
]

#: initial portion q (paper, Sec. 2.2)
DEFAULT_Q_START = 0.6
#: maximum number of self-training rounds K (paper, Sec. 2.2)
DEFAULT_ROUNDS = 2
#: the paper's 2D ROI as (start, end) fractions per array axis
PAST_ROI_2D = ((0.25, 0.75), (0.25, 0.75))
#: the paper's 3D ROI as (start, end) fractions per array axis
PAST_ROI_3D = ((0.25, 0.75), (0.375, 0.75), (0.0, 1.0))


def q_schedule(round_index: int, q_start: float = DEFAULT_Q_START, q_step: float = 0.2, q_max: float = 1.0) -> float:
    """Portion ``q_k = min(q_start + k * q_step, q_max)`` for the 0-based round ``k``."""
    if round_index < 0:
        raise ValueError(f"round_index must be >= 0, got {round_index}.")
    q = min(q_start + round_index * q_step, q_max)
    if not 0.0 <= q <= 1.0:
        raise ValueError(
            f"the portion q must be in [0, 1], got {q} (q_start={q_start}, q_step={q_step}, q_max={q_max})."
        )
    return float(q)


def _check_probs(probs: Any) -> torch.Tensor:
    p = torch.as_tensor(probs)
    if not p.is_floating_point():
        raise TypeError(f"probs must be floating point class probabilities, got dtype {p.dtype}.")
    if p.ndim < 2 or p.shape[0] < 2:
        raise ValueError(f"probs must be (C, *spatial) with C >= 2 classes, got shape {tuple(p.shape)}.")
    if not bool(torch.isfinite(p).all()):
        raise ValueError("probs contains NaN or Inf.")
    return p.detach()


def _n_keep(q: float, n: int) -> int:
    return min(n, int(math.floor(q * n + 1e-6)))  # the epsilon absorbs float error (0.29 * 100 = 28.999...)


def top_q_select(probs: Any, q: float, ignore_value: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, per class, the top ``q`` fraction of the pixels predicted as that class (Algorithm 1, line 7).

    Args:
        probs: ``(C, *spatial)`` class probabilities of one image (softmax output).
        q: kept portion in ``[0, 1]``; exactly ``floor(q * N_c)`` pixels of each predicted class ``c`` are kept
            (ties broken by pixel order).
        ignore_value: label of the dropped pixels.

    Returns:
        ``(label, keep)``: ``label`` ``(*spatial)`` int64 with ``argmax`` classes where kept and
        ``ignore_value`` elsewhere; ``keep`` the boolean mask of kept pixels.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}.")
    p = _check_probs(probs)
    conf, pred = p.max(dim=0)
    conf, pred = conf.reshape(-1), pred.reshape(-1)
    keep = torch.zeros_like(pred, dtype=torch.bool)
    for c in range(p.shape[0]):
        idx = torch.nonzero(pred == c, as_tuple=True)[0]
        k = _n_keep(q, idx.numel())
        if k == 0:
            continue
        order = torch.argsort(conf[idx], descending=True, stable=True)
        keep[idx[order[:k]]] = True
    label = torch.where(keep, pred, torch.full_like(pred, ignore_value))
    return label.reshape(p.shape[1:]), keep.reshape(p.shape[1:])


class TopQSelector:
    """PAST's pseudo-labeller (Dong et al.), ``(probs, round) -> (label, keep)``, for the self-training engine
    (:mod:`monai_uda.engines.self_training`; the contract is in :mod:`monai_uda.engines.pseudo_labellers`).

    Round ``r`` (0-based; round 0 labels with the source-trained model ``S_0``) uses ``q_r`` from
    ``schedule`` if given, else :func:`q_schedule`.

    Args:
        q_start: initial portion (paper: 0.6).
        q_step: increase per round.
        q_max: cap of the portion.
        schedule: explicit portions per round (overrides the three above; the last one repeats).
        ignore_value: label of dropped pixels.

    The top ``q`` is taken within each image, exactly; :class:`DatasetTopQSelector` takes it over the whole set.
    """

    def __init__(
        self,
        q_start: float = DEFAULT_Q_START,
        q_step: float = 0.2,
        q_max: float = 1.0,
        schedule: Sequence[float] | None = None,
        ignore_value: int = IGNORE_INDEX,
    ) -> None:
        if schedule is not None:
            schedule = [float(q) for q in schedule]
            if not schedule or any(not 0.0 <= q <= 1.0 for q in schedule):
                raise ValueError(f"schedule must be a non-empty list of portions in [0, 1], got {schedule}.")
        else:
            q_schedule(0, q_start, q_step, q_max)
        self.q_start, self.q_step, self.q_max = q_start, q_step, q_max
        self.schedule = schedule
        self.ignore_value = ignore_value

    def q_at(self, round_index: int) -> float:
        """The portion used in round ``round_index``."""
        if self.schedule is not None:
            if round_index < 0:
                raise ValueError(f"round_index must be >= 0, got {round_index}.")
            return self.schedule[min(round_index, len(self.schedule) - 1)]
        return q_schedule(round_index, self.q_start, self.q_step, self.q_max)

    def __call__(self, probs: Any, round_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return top_q_select(probs, self.q_at(round_index), self.ignore_value)


class DatasetTopQSelector(TopQSelector):
    """:class:`TopQSelector` whose top ``q`` per class is taken over the whole target set.

    The rounds driver calls :meth:`fit` on all target probabilities before labelling a round; it fixes one
    confidence threshold per class, and a pixel predicted as ``c`` is kept iff its confidence is at least
    the class threshold (ties at the threshold may keep a few more than ``floor(q N_c)``).
    Same arguments as :class:`TopQSelector`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._thresholds: dict[int, torch.Tensor] = {}

    def fit(self, probs_iter: Iterable[Any], round_index: int) -> torch.Tensor:
        """Per-class thresholds over a whole set: the confidence of the ``floor(q N_c)``-th most confident pixel
        predicted as ``c`` (``-inf`` keeps all, ``+inf`` none). Holds all confidences in memory."""
        q = self.q_at(round_index)
        per_class: dict[int, list[torch.Tensor]] = {}
        n_classes = None
        for probs in probs_iter:
            p = _check_probs(probs)
            n_classes = p.shape[0]
            conf, pred = p.max(dim=0)
            for c in range(n_classes):
                per_class.setdefault(c, []).append(conf[pred == c].reshape(-1).float())
        if n_classes is None:
            raise ValueError("TopQSelector.fit: no probabilities were given.")
        th = torch.full((n_classes,), math.inf)
        for c, vals in per_class.items():
            v = torch.cat(vals)
            k = _n_keep(q, v.numel())
            if k == v.numel() and k > 0:
                th[c] = -math.inf
            elif k > 0:
                th[c] = torch.sort(v, descending=True).values[k - 1]
        self._thresholds[round_index] = th
        return th

    def __call__(self, probs: Any, round_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if round_index not in self._thresholds:
            raise RuntimeError(f"DatasetTopQSelector: fit() was not called for round {round_index}.")
        p = _check_probs(probs)
        conf, pred = p.max(dim=0)
        keep = conf >= self._thresholds[round_index].to(conf.device)[pred]
        return torch.where(keep, pred, torch.full_like(pred, self.ignore_value)), keep


# ------------------------------------------------------------------------------------------------------ ROI


def roi_box(
    spatial_shape: Sequence[int], fractions: Sequence[Sequence[float]] | None = None
) -> tuple[list[int], list[int]]:
    """``(start, end)`` voxel indices of the ROI ``[floor(a_i * S_i) : floor(b_i * S_i)]`` per axis.

    ``fractions`` defaults to the paper's :data:`PAST_ROI_2D` / :data:`PAST_ROI_3D`.
    """
    spatial_shape = [int(s) for s in spatial_shape]
    if fractions is None:
        if len(spatial_shape) not in (2, 3):
            raise ValueError(f"default ROI fractions exist for 2D/3D only, got spatial shape {spatial_shape}.")
        fractions = PAST_ROI_2D if len(spatial_shape) == 2 else PAST_ROI_3D
    if len(fractions) != len(spatial_shape):
        raise ValueError(f"fractions has {len(fractions)} axes, the image {len(spatial_shape)} spatial axes.")
    start, end = [], []
    for (a, b), s in zip(fractions, spatial_shape):
        if not 0.0 <= a < b <= 1.0:
            raise ValueError(f"ROI fractions must satisfy 0 <= start < end <= 1, got ({a}, {b}).")
        lo, hi = int(math.floor(a * s)), int(math.floor(b * s))
        start.append(lo)
        end.append(max(hi, lo + 1))
    return start, end


def roi_crop(img: Any, fractions: Sequence[Sequence[float]] | None = None) -> Any:
    """Crop a channel-first image ``(C, *spatial)`` to the ROI of :func:`roi_box` with MONAI ``SpatialCrop``
    (a ``MetaTensor`` keeps a correct affine)."""
    shape = getattr(img, "shape", None)
    if shape is None or len(shape) < 3:
        raise ValueError(f"roi_crop expects a channel-first (C, *spatial) image, got shape {shape}.")
    start, end = roi_box(shape[1:], fractions)
    return SpatialCrop(roi_start=start, roi_end=end)(img)


def roi_crop_transform(
    keys: KeysCollection, fractions: Sequence[Sequence[float]] | None = None, allow_missing_keys: bool = False
) -> Lambdad:
    """Dictionary transform cropping every key to the same relative ROI (the paper's by default); insert it
    after loading/``EnsureChannelFirstd`` in a MONAI ``Compose`` when ROI cropping is wanted."""
    return Lambdad(keys=keys, func=partial(roi_crop, fractions=fractions), allow_missing_keys=allow_missing_keys)
