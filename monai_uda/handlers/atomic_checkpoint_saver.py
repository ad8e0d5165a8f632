"""`AtomicCheckpointSaver`: MONAI's ``CheckpointSaver`` with atomic writes."""

from __future__ import annotations

from monai.handlers import CheckpointSaver

__all__ = ["AtomicCheckpointSaver"]


class AtomicCheckpointSaver(CheckpointSaver):
    """``monai.handlers.CheckpointSaver`` whose files are written atomically (temp file + ``os.replace``).

    MONAI 1.6 builds ignite's ``DiskSaver`` with ``atomic=False``, so a crash while saving can leave a
    truncated ``model.pt`` behind and lose the previous one. This subclass switches every saver it
    created back to ignite's atomic mode; the arguments are those of ``CheckpointSaver``.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for ckpt in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            handler = getattr(ckpt, "save_handler", None)
            if handler is not None:
                if not hasattr(handler, "_atomic"):
                    raise RuntimeError("ignite's DiskSaver has no '_atomic' flag any more; update AtomicCheckpointSaver")
                handler._atomic = True
