"""Precise BatchNorm statistics: an optional last step of the source and oracle recipes (``precise_bn``, off).

Training samples crops, half of them centred on foreground, so the running BatchNorm statistics a trainer
keeps describe foreground-enriched crops, while inference slides a window over whole images. This step
recomputes the kept checkpoint's statistics over the whole training images with
``torch.optim.swa_utils.update_bn`` ("precise BN", Wu and Johnson, "Rethinking 'Batch' in BatchNorm", 2021).
Measured on A1 it is not a uniform improvement: it raised the source models' target-test Dice (0.531 to about
0.60 over three seeds) but lowered the oracle's by 17 points (seed 0), so the recipes keep it off
(``docs/benchmarks/precise_bn_check/``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

__all__ = ["precise_bn"]

logger = logging.getLogger(__name__)


def precise_bn(checkpoint: str | os.PathLike, network: torch.nn.Module, uda: Any, key: str, device: Any = "cpu",
               batch_size: int = 1, limit: int | None = None, num_workers: int = 0) -> str | None:
    """Recompute the BatchNorm running statistics of the model in ``checkpoint`` over the whole images of the
    datalist split ``key`` and write them back into ``checkpoint`` (atomically; the weights are unchanged).

    Args:
        checkpoint: a state dict of ``network`` (the recipe's ``model.pt``).
        network: the network the state dict belongs to (its weights are replaced by the checkpoint's).
        uda: the :class:`~monai_uda.data.UDAData` of the datalist.
        key: the split whose images give the statistics (the recipe's training split).
        device: where to run the forward passes.
        batch_size: whole images per forward pass (images of different sizes need 1).
        limit: at most this many images (None: all).
        num_workers: data-loader workers.

    Returns:
        ``checkpoint``, or None when the network has no BatchNorm layer (nothing is written).
    """
    from monai.data import DataLoader, Dataset

    from monai_uda.transforms import segmentation_transforms
    from monai_uda.utils import atomic_torch_save

    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in network.modules()):
        return None
    checkpoint = str(checkpoint)
    network.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    data = Dataset(uda.split(key, limit=limit), transform=segmentation_transforms("target", uda=uda))
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    with torch.no_grad():
        torch.optim.swa_utils.update_bn((batch["image"] for batch in loader), network, device=torch.device(device))
    atomic_torch_save(network.state_dict(), checkpoint)
    logger.info("precise BN: %s statistics recomputed over %d whole '%s' images", checkpoint, len(data), key)
    return checkpoint
