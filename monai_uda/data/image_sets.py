"""Turn what a user types (a datalist, a folder, a glob, one file) into MONAI data items."""

from __future__ import annotations

import glob
import os
from typing import Any

from .datalist import DatalistError

__all__ = ["image_items", "IMAGE_PATTERNS"]

IMAGE_PATTERNS = ("*.nii.gz", "*.nii", "*.png", "*.tif", "*.tiff")


def image_items(spec: str, datalist_key: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Image items (``{"image": path}``) from a UDA datalist JSON, a folder, a glob or a single file.

    Args:
        spec: ``path/to/datalist.json`` (``datalist_key`` picks the list), a folder (every image in it),
            a glob pattern, or one image file.
        datalist_key: list to read from a datalist, e.g. ``"source_training"`` or ``"target_training"``.
        limit: keep the first ``limit`` items.

    Raises:
        DatalistError: nothing matched (the message names ``spec``).
    """
    if spec.endswith(".json"):
        from .uda_data import UDAData

        key = datalist_key or "target_training"
        items = [{"image": it["image"]} for it in UDAData(spec, deep=False).split(key)]
    elif os.path.isdir(spec):
        files = sorted({f for p in IMAGE_PATTERNS for f in glob.glob(os.path.join(spec, p))})
        items = [{"image": f} for f in files]
    elif os.path.isfile(spec):
        items = [{"image": spec}]
    else:
        items = [{"image": f} for f in sorted(glob.glob(spec))]
    if not items:
        raise DatalistError(f"no images found for {spec!r}")
    return items[:limit] if limit else items
