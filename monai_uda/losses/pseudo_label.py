"""Losses on hard pseudo-labels with ignored pixels, shared by the self-training methods.

Pseudo-labellers (:mod:`monai_uda.engines.pseudo_labellers`, PAST's top-q, CBST, MC-dropout rectification)
mark the pixels they do not trust with :data:`monai_uda.utils.IGNORE_INDEX` (255); these losses leave them out.

- :class:`PseudoLabelCrossEntropyLoss`: cross-entropy over the selected pixels (Zou et al., "Unsupervised
  domain adaptation for semantic segmentation via class-balanced self-training", Eq. 3), the loss of the
  ST/CBST baselines.
- :class:`PseudoLabelDiceCELoss`: Dice + cross-entropy over the selected pixels, the loss of PAST's top-q
  self-training rounds (Dong et al., PAST).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from torch import nn

from monai_uda.utils import IGNORE_INDEX

__all__ = ["PseudoLabelCrossEntropyLoss", "PseudoLabelDiceCELoss"]


class PseudoLabelCrossEntropyLoss(nn.Module):
    """Cross-entropy on hard pseudo-labels, unselected pixels (``ignore_value``) excluded (Zou et al., Eq. 3).

    ``loss(logits, label)``: ``logits`` (B, C, *spatial); ``label`` (B, 1, *spatial) or (B, *spatial) class
    indices with ``ignore_value`` where no pseudo-label was selected. The mean is over the selected
    pixels of the batch; a batch without any selected pixel gives a zero loss that still has a gradient
    graph (instead of PyTorch's NaN), so a training step on it is a no-op.

    Args:
        ignore_value: label of unselected pixels (:data:`monai_uda.utils.IGNORE_INDEX`).
    """

    def __init__(self, ignore_value: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_value = int(ignore_value)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.ndim < 3 or logits.shape[1] < 2:
            raise ValueError(f"`logits` must be (batch, classes>=2, *spatial), got shape {tuple(logits.shape)}.")
        target = label[:, 0] if label.ndim == logits.ndim else label
        if target.shape != (logits.shape[0], *logits.shape[2:]):
            raise ValueError(f"`label` shape {tuple(label.shape)} does not match the logits {tuple(logits.shape)}.")
        target = torch.as_tensor(target).long()
        valid = target != self.ignore_value
        if not bool(valid.any()):
            return logits.sum() * 0.0
        bad = valid & ((target < 0) | (target >= logits.shape[1]))
        if bool(bad.any()):
            raise ValueError(
                f"`label` has values outside [0, {logits.shape[1]}) other than the ignore value {self.ignore_value}."
            )
        return F.cross_entropy(torch.as_tensor(logits), target, ignore_index=self.ignore_value)


class PseudoLabelDiceCELoss(nn.Module):
    """Dice + cross-entropy on class-index labels, ignoring ``ignore_index`` pixels (Dong et al., PAST).

    ``loss = lambda_dice * DiceLoss(softmax, to_onehot_y, ignore_index) + lambda_ce * CE(ignore_index)``; the
    cross-entropy is the mean over the selected pixels, and a batch whose pixels are all ignored contributes
    0 cross-entropy.

    Args:
        ignore_index: label of unselected pixels (:data:`monai_uda.utils.IGNORE_INDEX`).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, lambda_dice: float = 1.0, lambda_ce: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = int(ignore_index)
        self.lambda_dice, self.lambda_ce = float(lambda_dice), float(lambda_ce)
        self.dice = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=self.ignore_index)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] != 1:
            raise ValueError(
                f"PseudoLabelDiceCELoss expects class-index targets (B, 1, *spatial), got {tuple(target.shape)}."
            )
        t = target.long()
        bad = (t < 0) | ((t >= input.shape[1]) & (t != self.ignore_index))
        if bool(bad.any()):
            raise ValueError(f"target labels must be in [0, {input.shape[1]}) or {self.ignore_index}.")
        valid = t != self.ignore_index
        ce = F.cross_entropy(input, t[:, 0], ignore_index=self.ignore_index, reduction="sum")
        ce = ce / valid.sum().clamp_min(1)
        return self.lambda_dice * self.dice(input, target) + self.lambda_ce * ce
