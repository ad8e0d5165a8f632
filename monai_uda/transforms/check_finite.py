"""Fail early, with the file name, on images that contain NaN or Inf."""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

__all__ = ["CheckFinited"]


class CheckFinited(MapTransform):
    """Raise ``ValueError`` naming the file when an image holds NaN or Inf values."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            if not torch.isfinite(torch.as_tensor(d[key])).all():
                meta = getattr(d[key], "meta", {}) or {}
                raise ValueError(f"'{key}' contains NaN or Inf values: {meta.get('filename_or_obj', '<in memory>')}")
        return d
