"""BUDA-Seg's variance map (Li et al., Sec. 3): logits O and a variance map V from one pass.

The wrapped network is unchanged; a forward pre-hook on its last layer (``final_conv`` of
:class:`~monai_uda.networks.unet.UDAUNet` / MONAI ``BasicUNet``) reads the decoder features that
enter it, and an extra 1×1 convolution on those features gives V, made positive and finite by
``softplus(.) + min_variance``. O and V therefore share the decoder and have the same shape
``(B, C, *spatial)``: one value per pixel *and* per class, as in the paper (``V ∈ R^{W×H×C}``).
"""

from __future__ import annotations

import math
from typing import Tuple, Union

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv

from monai_uda.networks.features import FeatureRecorder

__all__ = ["VarianceUNet", "VARIANCE_OUTPUTS", "segmentation_network"]

#: accepted values of ``VarianceUNet.output``
VARIANCE_OUTPUTS = ("both", "logits", "variance")


class VarianceUNet(torch.nn.Module):
    """Wrap a segmentation network so that it also predicts a per-pixel, per-class variance map.

    Example::

        net = VarianceUNet(UDAUNet(spatial_dims=2, out_channels=5))
        logits, variance = net(x)  # training (Eq. 1 needs both)
        net.output = "logits"       # inference: one tensor, the segmentation logits
        logits = net(x)

    Args:
        network: a MONAI UNet-family network whose last layer ``feature_layer`` is a convolution
            mapping the decoder features to the class logits (``UDAUNet``/``BasicUNet``: ``final_conv``).
        min_variance: added after the softplus, so V >= ``min_variance`` > 0 everywhere.
        output: ``"both"`` returns ``(O, V)``; ``"logits"`` returns O only (segmentation inference,
            a single tensor); ``"variance"`` returns V only (to save it as an uncertainty image).
        feature_layer: dotted name of the layer whose *input* is the decoder feature map.
        init_variance: if given, the variance head starts from zero weights and a bias such that
            V == ``init_variance`` everywhere (useful when wrapping a pre-trained source model so that
            the first samples of Eq. 1 are not dominated by random noise); otherwise PyTorch's default
            initialisation is used.

    Raises:
        ValueError: bad ``output``/``min_variance``/``init_variance``, or a ``feature_layer`` that is not a
            convolution.
        KeyError: ``feature_layer`` is not a sub-module of ``network``.

    TorchScript: ``torch.jit.script`` (and so ``monai.bundle ckpt_export``) works for a ``BasicUNet``-family
    ``network`` with ``feature_layer="final_conv"``: forward hooks cannot be scripted, so the scripted
    forward runs the BasicUNet stages itself and takes the decoder features that enter ``final_conv``,
    the very tensor the hook records in eager mode (same values). ``output`` is fixed at scripting time.
    """

    __jit_unused_properties__ = ["output"]

    def __init__(
        self,
        network: torch.nn.Module,
        min_variance: float = 1e-6,
        output: str = "both",
        feature_layer: str = "final_conv",
        init_variance: float | None = None,
    ):
        super().__init__()
        if min_variance <= 0 or not math.isfinite(min_variance):
            raise ValueError(f"min_variance must be a positive finite number, got {min_variance}.")
        modules = dict(network.named_modules())
        if feature_layer not in modules:
            raise KeyError(f"feature_layer '{feature_layer}' is not a sub-module of {type(network).__name__}.")
        last = modules[feature_layer]
        if not isinstance(last, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)):
            raise ValueError(
                f"feature_layer '{feature_layer}' must be a Conv1d/2d/3d producing the logits, "
                f"got {type(last).__name__}."
            )
        self.network = network
        self.feature_layer = feature_layer
        self.min_variance = float(min_variance)
        self.spatial_dims = last.weight.ndim - 2
        self.num_classes = last.out_channels
        self.variance_conv = Conv["conv", self.spatial_dims](last.in_channels, last.out_channels, kernel_size=1)
        if init_variance is not None and not init_variance > min_variance:
            raise ValueError(f"init_variance ({init_variance}) must be larger than min_variance ({min_variance}).")
        self.init_variance = None if init_variance is None else float(init_variance)
        self._init_head()
        self.output = output

    def _init_head(self) -> None:
        if self.init_variance is None:
            return
        torch.nn.init.zeros_(self.variance_conv.weight)
        x = self.init_variance - self.min_variance  # softplus^{-1}(x) = log(expm1(x))
        torch.nn.init.constant_(self.variance_conv.bias, math.log(math.expm1(x)))

    def reset_parameters(self) -> None:
        """Give the variance head its initial value again (``init_variance``; PyTorch's default init without it).

        Called last by :func:`monai_uda.engines.self_training.reset_parameters` (after the wrapped network and
        the head convolution were re-initialised), for pseudo-label rounds that restart from random weights.
        """
        if self.init_variance is None:
            self.variance_conv.reset_parameters()
        self._init_head()

    @property
    def output(self) -> str:
        return self._output

    @output.setter
    def output(self, value: str) -> None:
        if value not in VARIANCE_OUTPUTS:
            raise ValueError(f"output must be one of {VARIANCE_OUTPUTS}, got '{value}'.")
        self._output = value

    def variance(self, features: torch.Tensor) -> torch.Tensor:
        """V = softplus(conv1x1(features)) + min_variance (positive, finite, no overflow)."""
        return F.softplus(self.variance_conv(features)) + self.min_variance

    @torch.jit.unused
    def _recorded_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Eager mode: logits and the input of ``feature_layer``, read with a forward pre-hook."""
        with FeatureRecorder(self.network, [self.feature_layer], record_input=True) as rec:
            logits = self.network(x)
        return logits, rec.features[self.feature_layer]

    def _scripted_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """TorchScript: ``BasicUNet.forward`` stage by stage, returning the logits and ``final_conv``'s input."""
        if self.feature_layer != "final_conv":
            raise RuntimeError("a scripted VarianceUNet needs feature_layer='final_conv' (a BasicUNet-family network).")
        net = self.network
        x0 = net.conv_0(x)
        x1 = net.down_1(x0)
        x2 = net.down_2(x1)
        x3 = net.down_3(x2)
        x4 = net.down_4(x3)
        u4 = net.upcat_4(x4, x3)
        u3 = net.upcat_3(u4, x2)
        u2 = net.upcat_2(u3, x1)
        u1 = net.upcat_1(u2, x0)
        return net.final_conv(u1), u1

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if self._output == "logits":
            return self.network(x)
        if torch.jit.is_scripting():
            logits, features = self._scripted_features(x)
        else:
            logits, features = self._recorded_features(x)
        var = self.variance(features)
        if var.shape != logits.shape:
            if torch.jit.is_scripting():
                raise RuntimeError("variance map shape differs from the logits; feature_layer must be the last layer.")
            raise RuntimeError(
                f"variance map shape {tuple(var.shape)} differs from the logits {tuple(logits.shape)}; "
                f"'{self.feature_layer}' must be the network's last layer."
            )
        if self._output == "variance":
            return var
        return logits, var


def segmentation_network(model: torch.nn.Module) -> torch.nn.Module:
    """The plain segmentation network inside ``model``: the wrapped network of a :class:`VarianceUNet` (the variance
    head is training-only), ``model`` itself otherwise. The ``segmentation_network`` of BUDA-Seg's self-training
    configuration (what labels the target and what is exported)."""
    return model.network if isinstance(model, VarianceUNet) else model
