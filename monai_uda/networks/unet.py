"""The segmentation network shared by every method: MONAI's ``BasicUNet`` with BatchNorm.

``BasicUNet`` has named stages, which is what the UDA methods hook into without forking it:

- ``conv_0``: full-resolution features, *before* the first downsampling (level 0);
- ``down_1`` … ``down_4``: one stage per resolution level (level 1 is ``down_1``);
- ``upcat_4`` … ``upcat_1``: the decoder; ``final_conv``: the 1×1 logits layer.

BatchNorm (not MONAI's default InstanceNorm) is used so that the source statistics live in
the network, which BatchNorm re-estimation needs. ``norm`` switches it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.nets import BasicUNet

__all__ = ["UDAUNet", "DEFAULT_FEATURES", "LEVEL_MODULES"]

#: a light feature set that trains on a CPU; MONAI's default is (32, 32, 64, 128, 256, 32)
DEFAULT_FEATURES = (16, 16, 32, 64, 128, 16)

#: resolution level -> name of the BasicUNet stage producing it
LEVEL_MODULES = {0: "conv_0", 1: "down_1", 2: "down_2", 3: "down_3", 4: "down_4"}


class UDAUNet(BasicUNet):
    """``monai.networks.nets.BasicUNet`` with UDA-friendly defaults (BatchNorm, light features).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (background included); the network returns logits.
        features: six feature counts, as for ``BasicUNet``.
        norm: normalisation, ``"batch"`` by default; any MONAI norm spec works.
        dropout: dropout probability inside every conv block (MC-dropout needs it > 0).
        act: activation spec.
        upsample: ``"deconv"``, ``"pixelshuffle"`` or ``"nontrainable"``.

    The input's spatial size must be divisible by 16.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = DEFAULT_FEATURES,
        norm: str | tuple = "batch",
        dropout: float = 0.0,
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        upsample: str = "deconv",
    ):
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            features=tuple(features),
            act=act,
            norm=norm,
            dropout=dropout,
            upsample=upsample,
        )
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.features = tuple(features)

    def level_module(self, level: int) -> torch.nn.Module:
        """The stage whose output is the feature map at resolution ``level`` (0 = full resolution)."""
        return getattr(self, LEVEL_MODULES[level])

    def level_channels(self, level: int) -> int:
        """Number of channels of the level-``level`` feature map."""
        return self.features[level]

    @property
    def decoder_channels(self) -> int:
        """Channels of the last decoder feature map (the input of ``final_conv``)."""
        return self.features[5]
