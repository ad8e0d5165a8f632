"""Small shared utilities."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

__all__ = ["IGNORE_INDEX", "atomic_write", "atomic_write_text", "atomic_json", "atomic_torch_save"]

#: label value of unlabelled / ignored pixels in pseudo-labels (every loss and pseudo-labeller uses this one)
IGNORE_INDEX = 255


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> str:
    """Write a file atomically: ``write(tmp)`` fills a temporary file next to ``path``, then ``os.replace``.

    The temporary file keeps the target's suffix (``.nii.gz``, ``.png``, ``.pt`` ...) so that writers
    that pick a format from the name work. On any error the temporary file is removed and an
    existing ``path`` is left untouched.

    Returns:
        ``path`` as a string.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(path)
    suffix = ".nii.gz" if base.endswith(".nii.gz") else os.path.splitext(base)[1]
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files: give the result the user's normal mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """:func:`atomic_write` for a text file."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_json(obj: Any, path: str | os.PathLike, indent: int = 2) -> str:
    """:func:`atomic_write` of ``obj`` as JSON (``default=str`` for paths and numpy scalars)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=str))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> str:
    """:func:`atomic_write` of ``torch.save(obj)`` (a state dict, a checkpoint dict)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
