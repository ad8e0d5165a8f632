"""Small shared utilities."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Callable, Iterator

__all__ = ["IGNORE_INDEX", "atomic_write", "atomic_write_text", "atomic_json", "atomic_torch_save", "folder_lock",
           "FolderLockedError", "user_error", "error_message", "file_hash"]

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


def file_hash(path: str | os.PathLike, hash_type: str = "sha256") -> str:
    """The hex digest of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.new(hash_type)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class FolderLockedError(RuntimeError):
    """Another process is writing the same output folder."""


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[str]:
    """Hold an exclusive lock on ``folder`` (``<folder>/.lock``, ``fcntl.flock``) while the block runs.

    A second writer is refused at once with :class:`FolderLockedError` naming the folder and the holder's
    process id. The operating system releases the lock when the holder exits, so a killed run leaves no
    stale lock behind.
    """
    import fcntl

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise FolderLockedError(f"{folder} is being written by another monai-uda run (pid {holder}); wait for it "
                                "to finish or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield folder
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def user_error(e: BaseException | None) -> BaseException | None:
    """The first error of ``e``'s cause/context chain whose message names what is wrong (a file, a key): an
    ``OSError``, ``KeyError``, ``ValueError`` (datalist and checkpoint errors) or :class:`FolderLockedError`;
    None when there is none (a bug, whose traceback matters)."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (OSError, KeyError, ValueError, FolderLockedError)):
            return e
        e = e.__cause__ or e.__context__
    return None


def error_message(e: BaseException) -> str:
    """One line for a user error (KeyError without the quotes its repr adds)."""
    if isinstance(e, PermissionError) and e.filename:
        return f"no permission to write {e.filename}: choose a writable --out folder"
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(str(msg).split()) or type(e).__name__
