"""Bring images to the channel count the network expects (grey <-> RGB)."""

from __future__ import annotations

from typing import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["MatchChannels", "MatchChannelsd"]

# ITU-R BT.601 luma weights
_LUMA = (0.299, 0.587, 0.114)


class MatchChannels(Transform):
    """Convert a channel-first image to ``channels`` channels.

    RGB(A) -> grey uses the BT.601 luma weights (alpha dropped); grey -> RGB repeats the channel.
    Any other mismatch raises a ``ValueError`` that names the shapes (and ``name`` when given).

    Args:
        channels: 1 or 3.
    """

    def __init__(self, channels: int = 1):
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.channels = channels

    def __call__(self, img: torch.Tensor, name: str | None = None) -> torch.Tensor:
        c = img.shape[0]
        if c == self.channels:
            return img
        if c == 4:  # RGBA: drop alpha
            img, c = img[:3], 3
            if self.channels == 3:
                return img
        if self.channels == 1 and c == 3:
            w = torch.as_tensor(_LUMA, dtype=torch.float32, device=img.device).reshape(3, *([1] * (img.ndim - 1)))
            return (img.float() * w).sum(0, keepdim=True)
        if self.channels == 3 and c == 1:
            return img.repeat(3, *([1] * (img.ndim - 1)))
        where = f" ({name})" if name else ""
        raise ValueError(f"cannot convert an image with {c} channels to {self.channels}{where}; shape {tuple(img.shape)}")


class MatchChannelsd(MapTransform):
    """Dictionary version of :class:`MatchChannels`; errors name the image file."""

    def __init__(self, keys: KeysCollection, channels: int = 1, allow_missing_keys: bool = False):
        super().__init__(keys, allow_missing_keys)
        self.converter = MatchChannels(channels)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {}) or {}
            d[key] = self.converter(d[key], name=str(meta.get("filename_or_obj", key)))
        return d
