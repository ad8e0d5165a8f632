"""Losses that more than one method uses (a method's own losses live in its ``methods/<method>/``)."""

from .pseudo_label import PseudoLabelCrossEntropyLoss, PseudoLabelDiceCELoss

__all__ = ["PseudoLabelCrossEntropyLoss", "PseudoLabelDiceCELoss"]
