"""The UDA datalist: one JSON file describing a source/target domain pair.

Format (all keys are MONAI datalist keys, so ``monai.data.load_decathlon_datalist(path,
data_list_key=KEY)`` reads any of the lists)::

    {
      "name": "A1",                       # free text
      "spatial_dims": 2,                  # 2 or 3
      "in_channels": 1,                   # channels the network sees after preprocessing
      "labels": {"0": "background", "1": "mito"},   # declared classes (after label_map)
      "label_map": {"2": 1, "3": 1},      # optional raw value -> class (e.g. BRATS codes -> tumour)
      "binarize": false,                  # optional: raw > 0 -> 1 (instance maps)
      "setting": "inductive",             # or "transductive" (target_training == target_test images)
      "source_training":   [{"image": "...", "label": "..."}],
      "source_validation": [{"image": "...", "label": "..."}],
      "target_training":   [{"image": "..."}],            # NO labels: what adaptation may use
      "target_test":       [{"image": "...", "label": "..."}],   # evaluation only
      "oracle_training":   [{"image": "...", "label": "..."}]    # target labels, oracle upper bound only
      "oracle_validation": [{"image": "...", "label": "..."}]    # optional: the oracle's own checkpoint selection
    }

Entries may carry ``"spacing"`` (physical pixel size, used by surface metrics for 2D images
that have no header). Paths are absolute or relative to the datalist file's folder.

Target labels appear only in ``target_test``, ``oracle_training`` and ``oracle_validation``; adaptation methods get
``target_training`` (see :func:`target_training_images`), which is validated to hold no label.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np

__all__ = [
    "DatalistError",
    "LABELLED_KEYS",
    "ALL_KEYS",
    "load_uda_datalist",
    "validate_uda_datalist",
    "write_uda_datalist",
    "target_training_images",
    "read_array",
]

LABELLED_KEYS = ("source_training", "source_validation", "target_test", "oracle_training", "oracle_validation")
ALL_KEYS = ("source_training", "source_validation", "target_training", "target_test", "oracle_training",
            "oracle_validation")
REQUIRED_KEYS = ("source_training", "target_training", "target_test")
#: the other top-level keys monai-uda reads or writes (anything else is reported, with the nearest valid name)
OPTIONAL_KEYS = ("name", "description", "spatial_dims", "in_channels", "labels", "label_map", "binarize", "setting",
                 "surface_tolerance", "spacing_unit", "pixdim", "base_dir", "notes", "demo_version", "roi_fractions",
                 "translated_from", "manifest", "source", "target", "seed")
#: keys of a list entry
ITEM_KEYS = ("image", "label", "spacing", "name", "id", "domain", "weight", "pseudo_label_round")


class DatalistError(ValueError):
    """A UDA datalist is malformed or points at bad data; the message names the key and file."""


def _resolve(path: str, base_dir: str) -> str:
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


def read_array(path: str) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """Read an image file into a numpy array plus its spacing (None for formats without one).

    2D PNG/TIFF come back as (H, W) or (H, W, C); NIfTI as the stored array (x, y, z).
    Raises:
        DatalistError: the file is missing or cannot be decoded (the message names the file).
    """
    if not os.path.isfile(path):
        raise DatalistError(f"file not found: {path}")
    lower = path.lower()
    try:
        if lower.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(path)
            arr = np.asarray(img.dataobj)
            return arr, tuple(float(z) for z in img.header.get_zooms()[: arr.ndim])
        if lower.endswith((".tif", ".tiff")):
            import tifffile

            return np.asarray(tifffile.imread(path)), None
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im), None
    except DatalistError:
        raise
    except Exception as e:  # corrupt or truncated file
        raise DatalistError(f"cannot read {path}: {type(e).__name__}: {e}") from e


def _read(where: str, path: str) -> tuple[np.ndarray, tuple[float, ...] | None]:
    try:
        return read_array(path)
    except DatalistError as e:
        raise DatalistError(f"{where}: {e}") from None


def _declared_values(dl: Mapping[str, Any]) -> set[int] | None:
    """Raw label values that are allowed; None means any non-negative integer (binarize)."""
    if dl.get("binarize", False):
        return None
    allowed = {int(k) for k in dl.get("labels", {"0": "background", "1": "foreground"})}
    allowed |= {int(k) for k in dl.get("label_map", {})}
    return allowed


def _unknown_keys(where: str, keys: Any, known: tuple[str, ...]) -> None:
    """A key close to a known one is a typo: refuse it, naming the nearest valid key; others are warned about."""
    import difflib
    import warnings

    for k in keys:
        if k in known:
            continue
        near = difflib.get_close_matches(str(k), known, n=1, cutoff=0.75)
        if near:
            raise DatalistError(f"{where}: unknown key {k!r}; did you mean {near[0]!r}?")
        warnings.warn(f"{where}: unknown key {k!r} is ignored (known keys: {', '.join(known)})", stacklevel=3)


def _check_dims(dl: Mapping[str, Any], where: str, path: str, img: np.ndarray) -> None:
    """The image's dimensionality and channels must fit the declared ``spatial_dims`` and ``in_channels``.

    2D: (H, W) or (H, W, C) with C in {1, 3, 4} (grey, RGB, RGBA: the pipeline converts RGB(A) <-> grey) or
    C == in_channels; 3D: (X, Y, Z) or (X, Y, Z, C) with C == in_channels.
    """
    dims, channels = int(dl.get("spatial_dims", 2)), int(dl.get("in_channels", 1))
    ok_channels = {channels} | ({1, 3, 4} if channels in (1, 3) else set())
    if img.ndim == dims or (img.ndim == dims + 1 and img.shape[-1] in (ok_channels if dims == 2 else {channels})):
        return
    if img.ndim == dims + 1 and img.shape[-1] <= 4:
        raise DatalistError(f"{where}: {path} has {img.shape[-1]} channels (shape {tuple(img.shape)}) but the "
                            f"datalist declares in_channels {channels}")
    raise DatalistError(f"{where}: {path} is {img.ndim}-dimensional (shape {tuple(img.shape)}) but the datalist "
                        f"declares spatial_dims {dims}")


def _check_entry(dl: Mapping[str, Any], key: str, i: int, item: Mapping[str, Any], deep: bool) -> None:
    where = f"{key}[{i}]"
    if not isinstance(item, Mapping) or "image" not in item:
        raise DatalistError(f"{where}: entry must be a dict with an 'image' path, got {item!r}")
    _unknown_keys(where, item, ITEM_KEYS)
    if key == "target_training" and "label" in item:
        raise DatalistError(
            f"{where}: target_training must not carry labels (target labels are for evaluation only; "
            "put them in target_test or oracle_training)"
        )
    if key in LABELLED_KEYS and "label" not in item:
        raise DatalistError(f"{where}: entry has no 'label' ({item['image']})")
    img_path = item["image"]
    if not os.path.isfile(img_path):
        raise DatalistError(f"{where}: image file not found: {img_path}")
    if "label" in item and not os.path.isfile(item["label"]):
        raise DatalistError(f"{where}: label file not found: {item['label']}")
    if not deep:
        return
    img, img_sp = _read(where, img_path)
    _check_dims(dl, where, img_path, img)
    if not np.all(np.isfinite(img.astype(np.float64, copy=False))):
        raise DatalistError(f"{where}: image contains NaN or Inf values: {img_path}")
    if "label" not in item:
        return
    lab, lab_sp = _read(where, item["label"])
    spatial = img.shape[: lab.ndim] if img.ndim == lab.ndim + 1 and dl.get("spatial_dims", 2) == 2 else img.shape
    if tuple(spatial) != tuple(lab.shape):
        raise DatalistError(
            f"{where}: image/label shape mismatch: {img_path} has {tuple(img.shape)}, "
            f"{item['label']} has {tuple(lab.shape)}"
        )
    if img_sp is not None and lab_sp is not None and not np.allclose(img_sp, lab_sp, rtol=1e-3, atol=1e-4):
        raise DatalistError(
            f"{where}: image/label spacing mismatch: {img_path} has {img_sp}, {item['label']} has {lab_sp}"
        )
    allowed = _declared_values(dl)
    values = np.unique(lab)
    if allowed is None:
        bad = values[(values < 0) | (values != np.round(values))]
    else:
        bad = np.array([v for v in values if v not in allowed])
    if bad.size:
        raise DatalistError(
            f"{where}: label values {sorted(bad.tolist())} in {item['label']} are outside the declared classes "
            f"{sorted(allowed) if allowed is not None else 'non-negative integers'} (set 'labels', 'label_map' "
            "or 'binarize' in the datalist)"
        )


def validate_uda_datalist(dl: Mapping[str, Any], deep: bool = True) -> None:
    """Check a resolved datalist; raise :class:`DatalistError` naming the first bad key or file.

    Args:
        dl: the datalist dict with absolute paths (as returned by :func:`load_uda_datalist`).
        deep: also open every file (shape, spacing, NaN and label-value checks), not just check it exists.
    """
    _unknown_keys("datalist", dl, ALL_KEYS + OPTIONAL_KEYS)
    if int(dl.get("spatial_dims", 2)) not in (2, 3):
        raise DatalistError(f"spatial_dims must be 2 or 3, got {dl.get('spatial_dims')!r}")
    for key in REQUIRED_KEYS:
        if key not in dl:
            raise DatalistError(f"datalist has no '{key}' list")
    if len(dl["target_training"]) == 0:
        raise DatalistError("'target_training' is empty: adaptation needs at least one unlabelled target image")
    if len(dl["source_training"]) == 0:
        raise DatalistError("'source_training' is empty")
    for key in ALL_KEYS:
        for i, item in enumerate(dl.get(key, [])):
            _check_entry(dl, key, i, item, deep)


def load_uda_datalist(
    path: str | os.PathLike, validate: bool = True, deep: bool = True, base_dir: str | None = None
) -> dict[str, Any]:
    """Load a UDA datalist JSON, resolve its paths and (by default) validate it.

    Args:
        path: the JSON file.
        validate: run :func:`validate_uda_datalist`.
        deep: open every file during validation (slower, catches corrupt files and bad labels).
        base_dir: folder for relative paths; default: the file's ``base_dir`` key, else its folder.

    Returns:
        The datalist dict with absolute paths.
    """
    path = str(path)
    if not os.path.isfile(path):
        raise DatalistError(f"datalist file not found: {path}")
    try:
        with open(path) as f:
            dl = json.load(f)
    except json.JSONDecodeError as e:
        raise DatalistError(f"datalist {path} is not valid JSON: {e}") from e
    base_dir = base_dir or dl.get("base_dir") or os.path.dirname(os.path.abspath(path))
    for key in ALL_KEYS:
        items = dl.get(key)
        if items is None:
            continue
        if not isinstance(items, list):
            raise DatalistError(f"datalist {path}: '{key}' must be a list")
        for item in items:
            if isinstance(item, dict):
                for k in ("image", "label"):
                    if k in item and isinstance(item[k], str):
                        item[k] = _resolve(item[k], base_dir)
    if validate:
        try:
            validate_uda_datalist(dl, deep=deep)
        except DatalistError as e:
            raise DatalistError(f"{path}: {e}") from None
    return dl


def write_uda_datalist(dl: Mapping[str, Any], path: str | os.PathLike) -> str:
    """Write a datalist atomically (temp file + rename), so an existing file is never half-written."""
    from monai_uda.utils import atomic_write_text

    return atomic_write_text(path, json.dumps(dl, indent=2))


def target_training_images(dl: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The unlabelled target images an adaptation method may use (image paths only, never labels)."""
    return [{k: v for k, v in item.items() if k != "label"} for item in dl["target_training"]]
