"""Prediction entropy and information maximisation (IM), from the probabilities alone.

- ``entropy``: the negated mean per-pixel Shannon entropy (nats) of the softmax prediction, every target
  pixel counted once. A confident model scores higher; used as a validator for domain adaptation by
  Morerio, Cavazza and Murino, "Minimal-Entropy Correlation Alignment for Unsupervised Deep Domain
  Adaptation", ICLR 2018. A model that collapses to one class is also confident: see ``im``.
- ``im``: information maximisation, the mutual information between pixels and predicted classes,
  ``H(mean_x p(y|x)) - mean_x H(p(y|x))``: the entropy of the class-marginal prediction (diversity)
  minus the mean per-pixel entropy (confidence). Shi and Sha, "Information-Theoretical Learning of
  Discriminative Clusters for Unsupervised Domain Adaptation", ICML 2012; as the loss
  ``L_ent + L_div`` of Liang, Hu and Feng, "Do We Really Need to Access the Source Data? Source
  Hypothesis Transfer for Unsupervised Domain Adaptation" (SHOT), ICML 2020, whose negation this is.

In segmentation the marginal is dominated by background, so the diversity term rewards predicting more
foreground up to balanced classes; it punishes the all-background collapse, not a moderate over-segmentation.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .predictions import Candidate, Predictions
from .registry import register_validator

__all__ = ["pixel_entropy", "entropy_score", "information_maximization_score"]


def pixel_entropy(probabilities: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Per-pixel Shannon entropy in nats over the class axis ``dim`` (``0 log 0 = 0``)."""
    return torch.special.entr(probabilities.float()).sum(dim)


def _probabilities(predictions: Predictions | Sequence[torch.Tensor], name: str) -> list[torch.Tensor]:
    if isinstance(predictions, Predictions):
        return predictions.require("probabilities", name)
    return list(predictions)


def _entropy_terms(predictions: Predictions | Sequence[torch.Tensor], name: str) -> tuple[float, float]:
    """(mean per-pixel entropy, entropy of the class-marginal mean) over every pixel of every image."""
    total_entropy, pixels, class_sums = 0.0, 0, None
    for p in _probabilities(predictions, name):
        p = p.float().flatten(1)
        total_entropy += float(pixel_entropy(p).sum())
        pixels += p.shape[1]
        class_sums = p.sum(1, dtype=torch.float64) if class_sums is None else class_sums + p.sum(1, dtype=torch.float64)
    marginal = class_sums / pixels
    return total_entropy / pixels, float(torch.special.entr(marginal).sum())


def entropy_score(predictions: Predictions | Sequence[torch.Tensor]) -> float:
    """Negated mean per-pixel entropy (nats); 0 for one-hot predictions, ``-log(C)`` for uniform ones."""
    return -_entropy_terms(predictions, "entropy_score")[0]


def information_maximization_score(predictions: Predictions | Sequence[torch.Tensor]) -> float:
    """IM = ``H(marginal) - mean H(pixel)`` in nats: between ``-log(C)`` and ``log(C)``; higher is better."""
    mean_entropy, marginal_entropy = _entropy_terms(predictions, "information_maximization_score")
    return marginal_entropy - mean_entropy


@register_validator("entropy")
def _entropy(candidate: Candidate) -> float:
    return entropy_score(candidate.predictions)


@register_validator("im")
def _im(candidate: Candidate) -> float:
    return information_maximization_score(candidate.predictions)

