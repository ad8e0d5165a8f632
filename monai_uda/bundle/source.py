"""Source checkpoints for adaptation bundles, and atomic saving of adapted networks."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

__all__ = ["ensure_source_checkpoint", "save_network", "load_network"]

logger = logging.getLogger(__name__)

#: a short source training, enough for the demo pair; real work passes its own checkpoint
DEMO_SOURCE_BUDGET = {"max_epochs": 8, "epoch_length": 10, "batch_size": 4, "num_samples": 2,
                      "validate_during_training": False}


def ensure_source_checkpoint(datalist: str, out_dir: str, spatial_dims: int = 2, **overrides: Any) -> str:
    """``out_dir/model.pt`` of a source-only model of ``datalist``, training it first if it is absent.

    This is what adaptation bundles use when no ``source_checkpoint`` is given, so that they run on
    the demo pair with no argument. For real data, train with ``bundles/source_segmentation`` (or
    bring your own ``UDAUNet`` weights) and pass ``--source_checkpoint``.
    """
    path = os.path.join(out_dir, "model.pt")
    if os.path.isfile(path):
        return path
    from .run import run_bundle

    logger.warning(f"no source checkpoint given: training a short source model into {out_dir}")
    budget = dict(DEMO_SOURCE_BUDGET, roi_size=[64, 64] if spatial_dims == 2 else [48, 48, 48])
    budget.update(overrides)
    run_bundle("source_segmentation", "train.json", datalist=datalist, ckpt_dir=out_dir, output_dir=out_dir,
               spatial_dims=spatial_dims, **budget)
    return path


def load_network(network: torch.nn.Module, path: str, device: Any = "cpu") -> torch.nn.Module:
    """Load a state dict (a plain one, or ``{"model": ...}``) into ``network``; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = torch.load(path, map_location=device, weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise RuntimeError(f"{path} does not fit {type(network).__name__}: {e}") from e
    return network


def save_network(network: torch.nn.Module, path: str) -> str:
    """Save ``network.state_dict()`` atomically (temp file + ``os.replace``)."""
    from monai_uda.utils import atomic_write

    net = network.module if hasattr(network, "module") else network
    return atomic_write(path, lambda tmp: torch.save(net.state_dict(), tmp))
