"""Resume support for bundle training: find the newest resume checkpoint and load it."""

from __future__ import annotations

import glob
import logging
import os
from typing import Any, Mapping

import torch

__all__ = ["latest_checkpoint", "resume_from", "SelectionState"]

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


class SelectionState:
    """What a resumed training needs to keep choosing its checkpoint as an uninterrupted one would.

    The resume checkpoint holds the network, optimizer, trainer and learning-rate schedule; this object adds
    the early stopper's counter and best score (MONAI ``EarlyStopHandler``) and the best-checkpoint saver's
    record of the kept ``model.pt`` and its score (MONAI ``CheckpointSaver`` with ``save_key_metric``), so that
    after a resume a worse validation does not overwrite the best model and patience is not reset.
    """

    def __init__(self, early_stop: Any = None, best_saver: Any = None):
        self.early_stop = early_stop
        self.best_saver = best_saver

    def _parts(self) -> dict[str, Any]:
        parts = {}
        if self.early_stop is not None and getattr(self.early_stop, "_handler", None) is not None:
            parts["early_stop"] = self.early_stop._handler  # ignite EarlyStopping
        if self.best_saver is not None and getattr(self.best_saver, "_key_metric_checkpoint", None) is not None:
            parts["best_saver"] = self.best_saver._key_metric_checkpoint  # ignite Checkpoint
        return parts

    def state_dict(self) -> dict[str, Any]:
        return {k: v.state_dict() for k, v in self._parts().items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for k, v in self._parts().items():
            if k in state:
                v.load_state_dict(state[k])
