"""Fourier domain adaptation (FDA, Yang & Soatto, CVPR 2020), a training-free pixel-alignment baseline.

For a source image ``x_s`` and a target image ``x_t`` with Fourier transforms ``F = A e^{iP}`` (amplitude
``A``, phase ``P``), FDA (their Eq. 1) is

    x_{s->t} = F^{-1}( [ M_beta * A(x_t) + (1 - M_beta) * A(x_s),  P(x_s) ] )

where ``M_beta`` is the centred (after ``fftshift``) square/cube of half-width ``b = floor(beta *
min(spatial size))``: the low-frequency amplitude ("style": contrast, mean level, slow shading) comes from
the target, the phase and high frequencies ("content", edges) stay the source's. ``beta`` is small
(0.01-0.09 in the paper); ``b = 0`` keeps the image unchanged except the DC term, which is always swapped.

Both 2D and 3D channel-first images work; channels are handled independently. A target of another size is
resized to the source's spatial size first (``resize_target``).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Resize, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor

from monai_uda.methods.past.target_references import TargetReferences

__all__ = [
    "fda_low_frequency_mask",
    "fourier_domain_adaptation",
    "FourierDomainAdaptation",
    "RandFourierDomainAdaptationd",
]


def fda_low_frequency_mask(spatial_shape: Sequence[int], beta: float) -> torch.Tensor:
    """The centred (``fftshift``-ed) low-frequency mask ``M_beta`` of FDA Eq. 1, as a boolean tensor."""
    if not 0.0 <= beta <= 0.5:
        raise ValueError(f"beta must be in [0, 0.5], got {beta}.")
    spatial_shape = [int(s) for s in spatial_shape]
    b = int(np.floor(min(spatial_shape) * beta))
    mask = torch.zeros(spatial_shape, dtype=torch.bool)
    sl = tuple(slice(s // 2 - b, s // 2 + b + 1) for s in spatial_shape)  # centre after fftshift is s // 2
    mask[sl] = True
    return mask


def fourier_domain_adaptation(source: torch.Tensor, target: torch.Tensor, beta: float) -> torch.Tensor:
    """FDA Eq. 1 on channel-first tensors ``(C, *spatial)`` of the same spatial shape.

    ``target`` may have ``C`` channels or 1 (shared by all source channels).
    """
    src = convert_to_tensor(source, dtype=torch.float32, track_meta=False)
    tgt = convert_to_tensor(target, dtype=torch.float32, track_meta=False).to(src.device)
    if src.ndim < 3:
        raise ValueError(
            f"source must be channel-first (C, *spatial) with 2 or 3 spatial dims, got {tuple(src.shape)}."
        )
    if tgt.shape[1:] != src.shape[1:]:
        raise ValueError(f"target spatial shape {tuple(tgt.shape[1:])} differs from source {tuple(src.shape[1:])}.")
    if tgt.shape[0] not in (1, src.shape[0]):
        raise ValueError(f"target must have 1 or {src.shape[0]} channels, got {tgt.shape[0]}.")
    if not (torch.isfinite(src).all() and torch.isfinite(tgt).all()):
        raise ValueError("fourier_domain_adaptation: source or target contains NaN or Inf.")
    dims = tuple(range(1, src.ndim))
    f_s = torch.fft.fftshift(torch.fft.fftn(src, dim=dims), dim=dims)
    f_t = torch.fft.fftshift(torch.fft.fftn(tgt, dim=dims), dim=dims)
    amp_s, pha_s = f_s.abs(), f_s.angle()
    amp_t = f_t.abs().expand_as(amp_s)
    mask = fda_low_frequency_mask(src.shape[1:], beta).to(src.device)
    amp = torch.where(mask, amp_t, amp_s)  # M_beta * A_t + (1 - M_beta) * A_s
    f = torch.polar(amp, pha_s)
    out = torch.fft.ifftn(torch.fft.ifftshift(f, dim=dims), dim=dims).real
    return out


class FourierDomainAdaptation(Transform):
    """Swap the low-frequency amplitude spectrum of a channel-first image with a target reference's (FDA).

    Args:
        target: the target-domain reference image ``(C or 1, *spatial)``; may instead be passed per call.
        beta: relative half-width of the swapped low-frequency band (FDA's ``beta``; 0.01-0.09 typical).
        resize_target: resize a target of another spatial size to the image's (MONAI ``Resize``, area
            interpolation); if False such a target is an error.

    Example::

        fda = FourierDomainAdaptation(target=t2_slice, beta=0.05)
        t1_like_t2 = fda(t1_slice)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, target: Any = None, beta: float = 0.01, resize_target: bool = True) -> None:
        fda_low_frequency_mask([8, 8], beta)  # validates beta
        self.target = target
        self.beta = float(beta)
        self.resize_target = resize_target

    def _match(self, img: torch.Tensor, target: Any) -> torch.Tensor:
        tgt = convert_to_tensor(target, dtype=torch.float32, track_meta=False)
        if tgt.ndim != img.ndim:
            raise ValueError(
                f"target must be channel-first with the image's {img.ndim - 1} spatial dims, "
                f"got shape {tuple(tgt.shape)}."
            )
        if tgt.shape[1:] != img.shape[1:]:
            if not self.resize_target:
                raise ValueError(
                    f"target spatial shape {tuple(tgt.shape[1:])} differs from image {tuple(img.shape[1:])} "
                    "(set resize_target=True to resize it)."
                )
            tgt = convert_to_tensor(Resize(spatial_size=img.shape[1:], mode="area")(tgt), track_meta=False)
        return tgt

    def __call__(self, img: Any, target: Any = None, beta: float | None = None) -> Any:
        """
        Args:
            img: channel-first source image.
            target: overrides the reference given at construction.
            beta: overrides ``self.beta``.
        """
        target = self.target if target is None else target
        if target is None:
            raise ValueError("FourierDomainAdaptation: no target reference (pass `target` to __init__ or __call__).")
        x = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
        out = fourier_domain_adaptation(x, self._match(x, target), self.beta if beta is None else beta)
        return convert_to_dst_type(out, img, dtype=getattr(img, "dtype", None) if _is_float(img) else torch.float32)[0]


def _is_float(img: Any) -> bool:
    dt = getattr(img, "dtype", None)
    if dt is None:
        return False
    if isinstance(dt, torch.dtype):
        return dt.is_floating_point
    return np.issubdtype(dt, np.floating)


class RandFourierDomainAdaptationd(RandomizableTransform, MapTransform):
    """Dictionary FDA that draws a target-domain reference at random from a list on every call.

    Args:
        keys: image keys to adapt (all with the same drawn reference and beta).
        targets: target-domain references: channel-first arrays/tensors, or image file paths (loaded with
            MONAI ``LoadImage(ensure_channel_first=True)`` then ``target_transform``). Target labels are
            never needed.
        beta: a float, or a ``(low, high)`` range sampled uniformly per call.
        prob: probability of applying the transform.
        target_transform: applied to each loaded reference (e.g. the same intensity normalisation as the
            images), before FDA.
        cache_targets: keep loaded references in memory.
        resize_target: see :class:`FourierDomainAdaptation`.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        targets: Sequence[Any],
        beta: float | Sequence[float] = 0.01,
        prob: float = 1.0,
        target_transform: Callable | None = None,
        cache_targets: bool = True,
        resize_target: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if targets is None or len(targets) == 0:
            raise ValueError("RandFourierDomainAdaptationd: `targets` is empty.")
        self.targets = list(targets)
        if np.isscalar(beta):
            self.beta_range = (float(beta), float(beta))  # type: ignore[arg-type]
        else:
            self.beta_range = tuple(float(b) for b in beta)  # type: ignore[union-attr]
        if len(self.beta_range) != 2 or self.beta_range[0] > self.beta_range[1]:
            raise ValueError(f"beta must be a float or a (low, high) range, got {beta}.")
        for b in self.beta_range:
            fda_low_frequency_mask([8, 8], b)
        self.target_transform = target_transform
        self.cache_targets = cache_targets
        self._references = TargetReferences(self.targets, target_transform, cache_targets)
        self.fda = FourierDomainAdaptation(beta=self.beta_range[0], resize_target=resize_target)
        self._index = 0
        self._beta = self.beta_range[0]

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        self._index = int(self.R.randint(len(self.targets)))
        self._beta = float(self.R.uniform(*self.beta_range))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        ref = self._references[self._index]
        for key in self.key_iterator(d):
            d[key] = self.fda(d[key], target=ref, beta=self._beta)
        return d
