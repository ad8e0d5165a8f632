"""Agreement with the source model, and consensus with the other candidates (argmax maps only).

Both compare label maps by :func:`foreground_dice`, the Dice of the foreground classes **pooled over the
image set** (``2 sum_i |A_i,c ∩ B_i,c| / (sum_i |A_i,c| + sum_i |B_i,c|)``, averaged over the foreground
classes that either side predicts). Dice rather than pixel accuracy: accuracy is dominated by the
background and is near 1 for any two models that both find little foreground. Pooling avoids the 0/0 of
an image without foreground; when neither side predicts any foreground at all the Dice is ``empty``
(0 by default: a validator cannot vouch for a model that segments nothing).

- ``source_agreement``: foreground Dice between the candidate's and the source model's argmax. A sanity
  check rather than a target-accuracy estimate (the source model scores 1, and a large shift should make a
  good adapted model disagree with it); it flags adaptation that drifted away from anything the source
  model finds.
- ``consensus``: foreground Dice between the candidate's argmax and the pixel-wise majority vote over
  every candidate's argmax (itself included; ties go to the lower class index, i.e. background). The
  ensemble as a proxy of the target labels: Hu, Luo, Liang and Foo, "Towards Reliable Model Selection for
  Unsupervised Domain Adaptation: An Empirical Study and A Certified Baseline" (EnsV), NeurIPS 2024
  Datasets and Benchmarks; here with a hard vote on argmax maps so that no candidate's probabilities need
  to stay in memory.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .predictions import Candidate, Predictions
from .registry import register_validator

__all__ = ["foreground_dice", "majority_vote", "source_agreement_score", "consensus_score"]


def foreground_dice(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], num_classes: int,
                    masks: Sequence[torch.Tensor] | None = None, empty: float = 0.0) -> float:
    """Mean over foreground classes of the Dice of label maps ``a`` and ``b``, pooled over the images.

    Args:
        a, b: label maps, one per image, pairwise of the same shape.
        num_classes: class 0 is background and is left out.
        masks: optional boolean maps; only their pixels count.
        empty: returned when neither ``a`` nor ``b`` has any foreground pixel (in the masks).
    """
    if len(a) != len(b) or (masks is not None and len(masks) != len(a)):
        raise ValueError(f"foreground_dice: {len(a)} and {len(b)} label maps (and masks) must pair up")
    inter = torch.zeros(num_classes, dtype=torch.float64)
    sizes = torch.zeros(num_classes, dtype=torch.float64)
    for i, (x, y) in enumerate(zip(a, b)):
        x, y = torch.as_tensor(x).long(), torch.as_tensor(y).long()
        if x.shape != y.shape:
            raise ValueError(f"foreground_dice: label maps {i} differ in shape, {tuple(x.shape)} and {tuple(y.shape)}")
        if masks is not None:
            keep = torch.as_tensor(masks[i]).bool()
            x, y = x[keep], y[keep]
        inter += torch.bincount(x[x == y].flatten(), minlength=num_classes)[:num_classes]
        sizes += torch.bincount(x.flatten(), minlength=num_classes)[:num_classes]
        sizes += torch.bincount(y.flatten(), minlength=num_classes)[:num_classes]
    present = sizes[1:] > 0
    if not present.any():
        return float(empty)
    return float((2 * inter[1:][present] / sizes[1:][present]).mean())


def majority_vote(label_maps: Sequence[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Pixel-wise most frequent class of several label maps of one image (ties: the lower class)."""
    counts = torch.zeros((num_classes, *label_maps[0].shape), dtype=torch.int32)
    for m in label_maps:
        counts.scatter_add_(0, torch.as_tensor(m).long().unsqueeze(0), torch.ones_like(counts[:1]))
    return counts.argmax(0)


def source_agreement_score(predictions: Predictions) -> float:
    """Foreground Dice between the candidate's argmax and the source model's argmax (1 = identical)."""
    predictions.require("source_probabilities", "source_agreement_score")
    return foreground_dice(predictions.argmax, predictions.source_argmax, predictions.num_classes)


def consensus_score(predictions: Predictions) -> float:
    """Foreground Dice between the candidate's argmax and the majority vote of all candidates."""
    others = predictions.require("others_argmax", "consensus_score")
    votes = [majority_vote([own] + [o[i] for o in others], predictions.num_classes)
             for i, own in enumerate(predictions.argmax)]
    return foreground_dice(predictions.argmax, votes, predictions.num_classes)


@register_validator("source_agreement", needs={"source"})
def _source_agreement(candidate: Candidate) -> float:
    return source_agreement_score(candidate.predictions)


@register_validator("consensus", needs={"others"})
def _consensus(candidate: Candidate) -> float:
    return consensus_score(candidate.predictions)
