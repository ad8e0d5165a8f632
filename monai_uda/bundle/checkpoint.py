"""Resume support for bundle training: find the newest resume checkpoint and load it."""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Mapping

import torch

__all__ = ["latest_checkpoint", "resume_from"]

logger = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: str, prefix: str = "resume") -> str | None:
    """The newest ``{prefix}_*.pt`` in ``ckpt_dir`` (written by MONAI's atomic ``CheckpointSaver``), or None."""
    files = glob.glob(os.path.join(ckpt_dir, f"{prefix}_*.pt"))
    return max(files, key=os.path.getmtime) if files else None


def resume_from(path: str | None, objects: Mapping[str, Any], device: Any = "cpu", max_epochs: int | None = None) -> bool:
    """Load network/optimizer/trainer state from ``path`` into ``objects`` (ignite ``Checkpoint.load_objects``).

    Args:
        path: a checkpoint from the bundle's resume saver (None: nothing to resume).
        objects: ``{"model": ..., "optimizer": ..., "trainer": ...}``.
        device: map location.
        max_epochs: the run's (possibly larger) epoch budget; the checkpoint's own ``max_epochs``
            would otherwise make ignite think the run is finished and start again from epoch 0.

    Returns False (and logs) when there is nothing to resume from, so a first run starts fresh.
    """
    if path is None or not os.path.isfile(path):
        logger.info("resume requested but no checkpoint found; starting from scratch")
        return False
    from ignite.handlers import Checkpoint

    ckpt = torch.load(path, map_location=device, weights_only=False)
    Checkpoint.load_objects(to_load=dict(objects), checkpoint=ckpt)
    trainer = objects.get("trainer")
    if trainer is not None and max_epochs is not None:
        trainer.state.max_epochs = int(max_epochs)
    logger.info(f"resumed from {path}")
    return True
