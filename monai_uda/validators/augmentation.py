"""Consistency under test-time augmentation (TTA): does the prediction survive a flip, a rotation or a
small intensity change?

Each augmentation is applied to the image, the network predicts the augmented image, the spatial part is
undone on the probability map, and the argmax is compared with the plain prediction's argmax by the
pooled foreground Dice (:func:`~monai_uda.validators.agreement.foreground_dice`). The score is the mean of
that Dice over the augmentations (1 = fully consistent). Test-time augmentation as a measure of
prediction reliability in segmentation: Wang, Li, Aertsen, Deprest, Ourselin and Vercauteren, "Aleatoric
Uncertainty Estimation with Test-Time Augmentation for Medical Image Segmentation with Convolutional
Neural Networks", Neurocomputing 2019.

The default set (:func:`default_augmentations`) costs six forward passes per image: a flip of the last
spatial axis, a 90-degree rotation of the last two spatial axes, intensities x0.9 and x1.1 and shifts
+0.1 and -0.1 (images z-score normalised, as the package's pipelines make them). A model that predicts
nothing is consistent too; it scores 0 here by the Dice's convention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from monai.inferers import Inferer

from .agreement import foreground_dice
from .predictions import Candidate, Predictions, check_images, eval_mode, plain_argmax, predict_one
from .registry import register_validator

__all__ = ["Augmentation", "flip", "rot90", "intensity", "default_augmentations", "tta_consistency_score"]


@dataclass(frozen=True)
class Augmentation:
    """``apply`` maps an image ``(C, *spatial)``; ``invert`` maps its prediction ``(num_classes, *spatial)`` back."""

    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]
    invert: Callable[[torch.Tensor], torch.Tensor]


def flip(axis: int) -> Augmentation:
    """Mirror spatial axis ``axis`` (0 = the first spatial axis); its own inverse."""
    dims = (axis + 1,)
    return Augmentation(f"flip{axis}", lambda x: torch.flip(x, dims), lambda p: torch.flip(p, dims))


def rot90(axes: tuple[int, int] = (0, 1), k: int = 1) -> Augmentation:
    """Rotate by ``k`` quarter turns in the plane of spatial ``axes``; inverted by ``-k`` quarter turns."""
    dims = (axes[0] + 1, axes[1] + 1)
    return Augmentation(f"rot90_{k}_{axes[0]}{axes[1]}", lambda x: torch.rot90(x, k, dims),
                        lambda p: torch.rot90(p, -k, dims))


def intensity(scale: float = 1.0, shift: float = 0.0) -> Augmentation:
    """``image * scale + shift``; nothing to invert."""
    return Augmentation(f"intensity_x{scale:g}_{shift:+g}", lambda x: x * scale + shift, lambda p: p)


def default_augmentations(spatial_dims: int) -> list[Augmentation]:
    """Flip of the last spatial axis, a quarter turn of the last two, x0.9, x1.1, +0.1 and -0.1."""
    last = spatial_dims - 1
    return [flip(last), rot90((last - 1, last)), intensity(scale=0.9), intensity(scale=1.1),
            intensity(shift=0.1), intensity(shift=-0.1)]


def tta_consistency_score(network: torch.nn.Module, images: Sequence[torch.Tensor], inferer: Inferer | None = None,
                          device: str | torch.device = "cpu", augmentations: Sequence[Augmentation] | None = None,
                          predictions: Predictions | None = None) -> float:
    """Mean over augmentations of the pooled foreground Dice between augmented and plain predictions.

    Args:
        network: the candidate (run in eval mode, no gradients; moved to ``device``).
        images: target images ``(C, *spatial)``.
        inferer: a MONAI inferer (``SimpleInferer`` by default).
        device: where the network runs.
        augmentations: default :func:`default_augmentations`.
        predictions: the candidate's plain predictions on ``images``, to save that pass.
    """
    images = check_images(images)
    augmentations = default_augmentations(images[0].ndim - 1) if augmentations is None else list(augmentations)
    if not augmentations:
        raise ValueError("tta_consistency_score augmentations: empty")
    network.to(device)
    with eval_mode(network):
        num_classes, plain = plain_argmax(network, images, inferer, device, predictions, "tta_consistency_score")
        dice = []
        for aug in augmentations:
            augmented = [aug.invert(predict_one(network, aug.apply(x), inferer, device)).argmax(0) for x in images]
            dice.append(foreground_dice(plain, augmented, num_classes))
    return sum(dice) / len(dice)


@register_validator("tta", needs={"network"})
def _tta(candidate: Candidate, augmentations: Sequence[Augmentation] | None = None) -> float:
    return tta_consistency_score(candidate.network, candidate.images, candidate.inferer, candidate.device,
                                 augmentations, candidate.predictions)
