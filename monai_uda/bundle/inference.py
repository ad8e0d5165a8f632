"""What ``configs/inference.json`` calls: the output format of an input list, and the line that says where the
segmentations went."""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Sequence

__all__ = ["output_ext", "report_outputs"]

logger = logging.getLogger(__name__)

#: input extension -> output extension (a 2D PNG/TIFF gives a PNG/TIFF; everything else NIfTI)
_SAME_FORMAT = {".png": ".png", ".tif": ".tif", ".tiff": ".tif"}


def _ext(path: str) -> str:
    name = os.path.basename(os.fspath(path)).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else os.path.splitext(name)[1]


def _stem(path: str) -> str:
    name = os.path.basename(os.fspath(path))
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else os.path.splitext(name)[0]


def output_ext(datalist: Sequence[Any]) -> str:
    """The extension of the segmentations of ``datalist`` (items ``{"image": path}`` or paths): the inputs'
    format when they are all PNG or all TIFF, else ``.nii.gz`` (NIfTI in, NIfTI out)."""
    exts = {_SAME_FORMAT.get(_ext(it["image"] if isinstance(it, dict) else it), ".nii.gz") for it in datalist}
    if len(exts) == 1:
        return exts.pop()
    if exts:
        logger.warning("the inputs mix formats (%s): writing NIfTI (.nii.gz) segmentations", sorted(exts))
    return ".nii.gz"


def report_outputs(output_dir: str, datalist: Sequence[Any], ext: str | None = None) -> str:
    """Print (and return) one line: how many inputs got an output in ``output_dir``, with one example file."""
    output_dir = os.path.abspath(os.fspath(output_dir))
    written = []
    for it in datalist:
        stem = _stem(it["image"] if isinstance(it, dict) else it)
        found = sorted(glob.glob(os.path.join(glob.escape(output_dir), glob.escape(stem) + "_*")), key=os.path.getmtime)
        if found:
            written.append(found[-1])
    if written:
        line = f"inference: wrote {len(written)} of {len(datalist)} outputs to {output_dir} (e.g. {written[0]})"
    else:
        line = f"inference: no output written to {output_dir} ({len(datalist)} inputs)"
    print(line, flush=True)
    return line
