"""Prediction Enhancer training input of shallow-to-deep (Matskevych et al., Section 2.1): a random source forest's
foreground probability, never the raw image.

:class:`ForestProbabilityd` uses the forest that each item names (``forest_index``; validation: the same forest for
an image every epoch, so the validation metric measures the enhancer, not the draw). :class:`RandForestProbabilityd`
draws one of many source forests per sample ("to create more variability,
we sample from all previously trained classifiers"), computes the pixel features of the (context-padded)
image crop, predicts the forest's foreground probability, crops the context margin off the probability and
the label keys and, by default, drops the raw image from the sample, so nothing downstream can feed it to
the enhancer.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from monai_uda.methods.shallow2deep.forests import predict_foreground
from monai_uda.methods.shallow2deep.s2d import as_forest_probability
from monai_uda.methods.shallow2deep.pixel_features import PixelFeatures

__all__ = ["ForestProbabilityd", "RandForestProbabilityd"]


class ForestProbabilityd(MapTransform):
    """Replace an image by the foreground probability of the forest that the item names.

    Args:
        keys: the image key (exactly one; ``(1, *spatial)``, already normalised like the forests' training data).
        forests: fitted forests (:func:`monai_uda.methods.shallow2deep.forests.train_source_forests`).
        features: the forests' :class:`PixelFeatures` (or its config dict).
        output_key: where the tagged ``(1, *spatial)`` probability goes.
        crop_keys: keys (e.g. the label) cropped like the probability.
        margin: context pixels removed from every side after prediction (the crop was enlarged by it so
            that large-scale features see real image context).
        drop_input: remove ``keys`` from the sample (default; the enhancer never sees raw images).
        index_key: the item key holding the forest's index (taken modulo the number of forests; 0 when absent).
    """

    def __init__(
        self,
        keys: KeysCollection,
        forests: Sequence,
        features: PixelFeatures | Mapping | None = None,
        output_key: str = "rf_prob",
        crop_keys: KeysCollection = ("label",),
        margin: int = 0,
        drop_input: bool = True,
        index_key: str = "forest_index",
    ):
        MapTransform.__init__(self, keys)
        if len(self.keys) != 1:
            raise ValueError(f"{type(self).__name__} takes exactly one image key, got {self.keys}.")
        if len(forests) == 0:
            raise ValueError("forests is empty: run prepare_forests first.")
        if int(margin) < 0:
            raise ValueError(f"margin must be >= 0, got {margin}.")
        self.forests = list(forests)
        if features is None:
            features = PixelFeatures()
        self.features = PixelFeatures.from_config(features) if isinstance(features, Mapping) else features
        self.output_key = output_key
        self.crop_keys = (crop_keys,) if isinstance(crop_keys, str) else tuple(crop_keys)
        self.margin = int(margin)
        self.drop_input = drop_input
        self.index_key = index_key

    def forest_index(self, data: Mapping) -> int:
        return int(data.get(self.index_key, 0)) % len(self.forests)

    def _crop(self, x):
        if not self.margin:
            return x
        return x[(slice(None),) + tuple(slice(self.margin, s - self.margin) for s in x.shape[1:])]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        key = self.keys[0]
        img = d[key]
        if any(s <= 2 * self.margin for s in img.shape[1:]):
            raise ValueError(f"{key!r} of shape {tuple(img.shape)} is too small for a context margin of {self.margin}.")
        index = self.forest_index(d)
        feats = self.features(img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img))
        prob = self._crop(predict_foreground(self.forests[index], feats))
        d[self.output_key] = as_forest_probability(np.ascontiguousarray(prob), forest_index=index)
        for k in self.crop_keys:
            if k in d:
                d[k] = self._crop(d[k])
        if self.drop_input:
            d.pop(key)
        d.pop(self.index_key, None)
        return d


class RandForestProbabilityd(Randomizable, ForestProbabilityd):
    """Replace an image by the foreground probability of a randomly drawn forest (arguments: :class:`ForestProbabilityd`
    without ``index_key``)."""

    def __init__(self, keys: KeysCollection, forests: Sequence, features: PixelFeatures | Mapping | None = None,
                 output_key: str = "rf_prob", crop_keys: KeysCollection = ("label",), margin: int = 0,
                 drop_input: bool = True):
        ForestProbabilityd.__init__(self, keys, forests, features, output_key, crop_keys, margin, drop_input)
        self._index = 0

    def randomize(self, data=None) -> None:
        self._index = int(self.R.randint(len(self.forests)))

    def forest_index(self, data: Mapping) -> int:
        self.randomize()
        return self._index
