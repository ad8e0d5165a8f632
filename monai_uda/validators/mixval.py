"""MixVal: mixed target images as probes of what a candidate has learned (pixel-wise, for segmentation).

Hu, Liang, Liew, Xue, Bai and Wang, "Mixed Samples as Probes for Unsupervised Model Selection in Domain
Adaptation", NeurIPS 2023. Two target images ``a`` and ``b`` are mixed as ``lam * a + (1 - lam) * b`` with
``lam`` slightly above 1/2 (0.55), so that ``a`` dominates; the mixed image's pseudo-label is the
candidate's own argmax on ``a``, and the candidate is scored by how well its prediction on the mix agrees
with it. The paper's two probes become two sets of pixels:

- *intra-cluster* pixels, where the candidate's pseudo-labels of ``a`` and ``b`` agree: the mix stays
  inside one class (a test of neighbourhood density, as with entropy);
- *inter-cluster* pixels, where they differ: the mix lies between two classes and the dominant one
  should win (a test of the decision boundary).

Agreement is the pooled foreground Dice (:func:`~monai_uda.validators.agreement.foreground_dice`) of the
mix prediction and the dominant pseudo-label on those pixels; ``region="both"`` (default) averages the
two probes, as the paper combines both. Each image dominates one mix with a partner drawn at random
(seeded), so the cost is one forward pass per image; pairs of different shapes are cropped to their
common corner. A candidate that predicts no foreground cannot be probed and scores 0; one that predicts
foreground everywhere is *not* caught here (use ``foreground_fraction``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from monai.inferers import Inferer

from .agreement import foreground_dice
from .predictions import Candidate, Predictions, check_images, eval_mode, plain_argmax, predict_one
from .registry import register_validator

__all__ = ["REGIONS", "mixval_score"]

REGIONS = ("both", "intra", "inter")


def mixval_score(network: torch.nn.Module, images: Sequence[torch.Tensor], inferer: Inferer | None = None,
                 device: str | torch.device = "cpu", lam: float = 0.55, region: str = "both", seed: int = 0,
                 predictions: Predictions | None = None) -> float:
    """Pixel-wise MixVal score in [0, 1] (1 = every mix predicted as its dominant image's pseudo-label).

    Args:
        network: the candidate (eval mode, no gradients; moved to ``device``).
        images: at least two target images ``(C, *spatial)``.
        inferer: a MONAI inferer (``SimpleInferer`` by default).
        device: where the network runs.
        lam: the dominant image's weight, in (0.5, 1).
        region: ``"intra"``, ``"inter"`` or ``"both"`` (their mean; a probe with no foreground on either
            side is left out, and the score is 0 when both are).
        seed: of the partner of each image.
        predictions: the candidate's plain predictions on ``images``, to save that pass.
    """
    images = check_images(images)
    if not 0.5 < lam < 1:
        raise ValueError(f"lam must lie in (0.5, 1) so that one image dominates the mix, got {lam}")
    if region not in REGIONS:
        raise ValueError(f"region {region!r}: expected one of {', '.join(REGIONS)}")
    if len(images) < 2:
        raise ValueError(f"mixval_score images: needs at least 2 images to mix, got {len(images)}")
    network.to(device)
    rng = np.random.default_rng(seed)
    with eval_mode(network):
        num_classes, labels = plain_argmax(network, images, inferer, device, predictions, "mixval_score")
        mixed, dominant, same = [], [], []
        for a in range(len(images)):
            b = (a + int(rng.integers(1, len(images)))) % len(images)
            corner = tuple(slice(0, min(s, t)) for s, t in zip(labels[a].shape, labels[b].shape))
            xa, xb = images[a][(slice(None), *corner)], images[b][(slice(None), *corner)]
            ya, yb = labels[a][corner], labels[b][corner]
            mix = lam * xa.float() + (1 - lam) * xb.float()
            mixed.append(predict_one(network, mix, inferer, device).argmax(0))
            dominant.append(ya)
            same.append(ya == yb)
    intra = foreground_dice(mixed, dominant, num_classes, masks=same, empty=math.nan)
    inter = foreground_dice(mixed, dominant, num_classes, masks=[~s for s in same], empty=math.nan)
    score = {"intra": intra, "inter": inter}.get(region)
    if region == "both":
        probes = [s for s in (intra, inter) if not math.isnan(s)]
        score = sum(probes) / len(probes) if probes else math.nan
    return 0.0 if math.isnan(score) else score


@register_validator("mixval", needs={"network", "image_pairs"})
def _mixval(candidate: Candidate, lam: float = 0.55, region: str = "both", seed: int = 0) -> float:
    return mixval_score(candidate.network, candidate.images, candidate.inferer, candidate.device, lam, region,
                        seed, candidate.predictions)
