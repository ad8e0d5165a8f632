"""`UDAData`: a loaded, validated UDA datalist with the facts a bundle config needs."""

from __future__ import annotations

import copy
import os
from typing import Any

from .datalist import ALL_KEYS, DatalistError, load_uda_datalist

__all__ = ["UDAData"]


class UDAData:
    """A UDA domain pair, loaded from a datalist JSON (see :mod:`monai_uda.data.datalist`).

    Args:
        datalist: path of the datalist JSON.
        base_dir: folder that relative paths are resolved against (default: the JSON's folder).
        validate: validate on load (missing files, shapes, spacing, label values, empty target set).
        deep: open every file while validating.

    Example (in a bundle config)::

        "uda": {"_target_": "monai_uda.data.UDAData", "datalist": "@datalist"},
        "train#dataset#data": "$@uda.split('source_training')"
    """

    def __init__(self, datalist: str | os.PathLike, base_dir: str | None = None, validate: bool = True, deep: bool = True):
        self.path = str(datalist)
        self._dl = load_uda_datalist(self.path, validate=validate, deep=deep, base_dir=base_dir)

    # -- facts ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self._dl.get("name", os.path.splitext(os.path.basename(self.path))[0]))

    @property
    def spatial_dims(self) -> int:
        return int(self._dl.get("spatial_dims", 2))

    @property
    def in_channels(self) -> int:
        return int(self._dl.get("in_channels", 1))

    @property
    def labels(self) -> dict[int, str]:
        return {int(k): v for k, v in self._dl.get("labels", {"0": "background", "1": "foreground"}).items()}

    @property
    def num_classes(self) -> int:
        return max(self.labels) + 1

    @property
    def label_map(self) -> dict[int, int] | None:
        m = self._dl.get("label_map")
        return {int(k): int(v) for k, v in m.items()} if m else None

    @property
    def binarize(self) -> bool:
        return bool(self._dl.get("binarize", False))

    @property
    def pixdim(self) -> list[float] | None:
        return self._dl.get("pixdim")

    @property
    def setting(self) -> str:
        return str(self._dl.get("setting", "inductive"))

    @property
    def datalist(self) -> dict[str, Any]:
        """A copy of the resolved datalist dict."""
        return copy.deepcopy(self._dl)

    # -- splits --------------------------------------------------------------------------------
    def has(self, key: str) -> bool:
        """Whether the datalist has a non-empty ``key`` list (e.g. the optional ``oracle_validation``)."""
        return bool(self._dl.get(key))

    def split(self, key: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Items of one list (a copy). ``target_training`` never carries labels.

        Args:
            key: one of ``source_training``, ``source_validation``, ``target_training``,
                ``target_test``, ``oracle_training``, ``oracle_validation``.
            limit: keep only the first ``limit`` items (quick runs).
        """
        if key not in ALL_KEYS:
            raise DatalistError(f"unknown datalist key {key!r}; expected one of {ALL_KEYS}")
        if key not in self._dl or not self._dl[key]:
            raise DatalistError(f"{self.path}: the datalist has no '{key}' entries")
        items = copy.deepcopy(self._dl[key])
        if key == "target_training":
            items = [{k: v for k, v in it.items() if k != "label"} for it in items]
        return items[:limit] if limit else items

    def __repr__(self) -> str:
        sizes = {k: len(self._dl.get(k, [])) for k in ALL_KEYS}
        return f"UDAData({self.name!r}, {self.spatial_dims}D, classes={self.labels}, {sizes})"
