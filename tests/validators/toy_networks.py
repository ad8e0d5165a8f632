"""Toy segmentation networks with known predictions, shared by the validator tests."""

import torch


class Threshold(torch.nn.Module):
    """Two-class logits: foreground where the image exceeds ``t`` (confidently)."""

    def __init__(self, t=0.5):
        super().__init__()
        self.t = t

    def forward(self, x):
        d = 10.0 * (x[:, :1] - self.t)
        return torch.cat([-d, d], 1)


class AllBackground(torch.nn.Module):
    """Predicts background everywhere."""

    def forward(self, x):
        return torch.cat([torch.ones_like(x[:, :1]), -torch.ones_like(x[:, :1])], 1)
