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


def resume_from(path: str | None, objects: Mapping[str, Any], device: Any = "cpu") -> bool:
    """Load network/optimizer/trainer state from ``path`` into ``objects`` (ignite ``Checkpoint.load_objects``).

    Returns False (and logs) when there is nothing to resume from, so a first run starts fresh.
    """
    if path is None or not os.path.isfile(path):
        logger.info("resume requested but no checkpoint found; starting from scratch")
        return False
    from ignite.handlers import Checkpoint

    ckpt = torch.load(path, map_location=device, weights_only=False)
    Checkpoint.load_objects(to_load=dict(objects), checkpoint=ckpt)
    logger.info(f"resumed from {path}")
    return True
