"""Histogram matching to a target-domain reference, a training-free pixel-alignment baseline.

Each channel's intensities are mapped monotonically so that their empirical CDF matches the reference's
(``skimage.exposure.match_histograms``). With ``nonzero=True`` only non-zero voxels of the image are
mapped, onto the non-zero voxels of the reference, so MRI background stays zero. MONAI's
``HistogramNormalize`` equalises to a flat histogram, not to a reference, hence this transform.
"""

from __future__ import annotations

from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform, RandomizableTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy
from skimage.exposure import match_histograms

from monai_uda.methods.past.target_references import TargetReferences

__all__ = ["HistogramMatching", "RandHistogramMatchingd"]


class HistogramMatching(Transform):
    """Match the histogram of a channel-first image to a target reference, channel by channel.

    Args:
        reference: target-domain reference image ``(C or 1, *spatial)`` (any spatial size); may instead be
            passed per call.
        nonzero: match only non-zero voxels (onto the reference's non-zero voxels); zeros stay zero.

    Example::

        hm = HistogramMatching(reference=t2_volume, nonzero=True)
        t1_like_t2 = hm(t1_volume)
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, reference: Any = None, nonzero: bool = False) -> None:
        self.reference = reference
        self.nonzero = nonzero

    def __call__(self, img: Any, reference: Any = None) -> Any:
        reference = self.reference if reference is None else reference
        if reference is None:
            raise ValueError("HistogramMatching: no reference (pass `reference` to __init__ or __call__).")
        x = convert_to_numpy(img, dtype=np.float32)
        ref = convert_to_numpy(reference, dtype=np.float32)
        if x.ndim < 2:
            raise ValueError(f"HistogramMatching: image must be channel-first (C, *spatial), got shape {x.shape}.")
        if ref.ndim < 2 or ref.shape[0] not in (1, x.shape[0]):
            raise ValueError(
                f"HistogramMatching: reference must be channel-first with 1 or {x.shape[0]} channels, "
                f"got shape {ref.shape}."
            )
        if not (np.isfinite(x).all() and np.isfinite(ref).all()):
            raise ValueError("HistogramMatching: image or reference contains NaN or Inf.")
        out = np.empty_like(x)
        for c in range(x.shape[0]):
            xc, rc = x[c], ref[c if ref.shape[0] > 1 else 0]
            if self.nonzero:
                m, rv = xc != 0, rc[rc != 0]
                out[c] = xc
                if m.any() and rv.size:
                    out[c][m] = match_histograms(xc[m], rv)
            else:
                out[c] = match_histograms(xc, rc)
        return convert_to_dst_type(out, img, dtype=np.float32)[0]


class RandHistogramMatchingd(RandomizableTransform, MapTransform):
    """Dictionary histogram matching to a target-domain reference drawn at random from a list on every call.

    Args:
        keys: image keys to match (all to the same drawn reference).
        references: target-domain references: channel-first arrays/tensors or image file paths (loaded with
            MONAI ``LoadImage(ensure_channel_first=True)`` then ``reference_transform``).
        prob: probability of applying the transform.
        nonzero: see :class:`HistogramMatching`.
        reference_transform: applied to each loaded reference.
        cache_references: keep loaded references in memory.
        allow_missing_keys: don't raise for missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        references: Sequence[Any],
        prob: float = 1.0,
        nonzero: bool = False,
        reference_transform: Callable | None = None,
        cache_references: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        if references is None or len(references) == 0:
            raise ValueError("RandHistogramMatchingd: `references` is empty.")
        self.references = list(references)
        self.reference_transform = reference_transform
        self.cache_references = cache_references
        self._references = TargetReferences(self.references, reference_transform, cache_references)
        self.matcher = HistogramMatching(nonzero=nonzero)
        self._index = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        if self._do_transform:
            self._index = int(self.R.randint(len(self.references)))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        ref = self._references[self._index]
        for key in self.key_iterator(d):
            d[key] = self.matcher(d[key], reference=ref)
        return d
