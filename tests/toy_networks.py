"""Toy segmentation networks with known predictions and toy images, shared by the validator and handler tests."""

from __future__ import annotations

import torch


class Threshold(torch.nn.Module):
    """Two-class logits: foreground where the image exceeds ``t`` (confidently); pixel-wise, so equivariant to flips
    and rotations. ``t`` is a parameter (a handler that keeps and restores weights sees it change); ``roll`` shifts
    the logits along the last axis (a translation: no longer equivariant)."""

    def __init__(self, t: float = 0.5, roll: int = 0):
        super().__init__()
        self.t = torch.nn.Parameter(torch.tensor(float(t)))
        self.roll = roll

    def forward(self, x):
        d = 10.0 * (x[:, :1] - self.t)
        logits = torch.cat([-d, d], 1)
        return torch.roll(logits, self.roll, dims=-1) if self.roll else logits


class AllBackground(torch.nn.Module):
    """Predicts background everywhere."""

    def forward(self, x):
        return torch.cat([torch.ones_like(x[:, :1]), -torch.ones_like(x[:, :1])], 1)


def blobs(corners=((2, 2), (5, 6), (8, 3)), side: int = 5, size: int = 16) -> list[torch.Tensor]:
    """One ``(1, size, size)`` image per corner: a bright ``side`` x ``side`` square on a dark background."""
    images = []
    for r, c in corners:
        x = torch.zeros(1, size, size)
        x[:, r:r + side, c:c + side] = 1.0
        images.append(x)
    return images
