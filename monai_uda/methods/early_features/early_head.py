"""Early Features Segmentor (Sheikh & Schultz, MIDL 2022, Sec. 2.2 and Fig. 1).

A small segmentation head is attached to the early features of a :class:`~monai_uda.networks.unet.UDAUNet`
*without forking the network*: forward hooks (:class:`~monai_uda.networks.features.FeatureRecorder`)
read the output of

- level 0: ``conv_0``, the full-resolution features just before the first downsampling (the paper's
  proposed head), and optionally
- level 1: ``down_1``, the features just before the second downsampling (Appendix C, "refine L1 and L2"
  / "refine L1 then L2"); its logits are upsampled to the input resolution, as the paper does
  ("upsampling logits and computing the segmentation losses at the original resolution").

The three stages of the method map onto this module as follows:

1. source training of the base network (any trainer);
2. head training: :func:`freeze_for_head_training` freezes the base (weights *and* BatchNorm
   statistics) and the head is trained with the cross-entropy of Eq. 1 on source labels
   (:class:`monai_uda.methods.early_features.refinement.EarlyHeadLoss`);
3. refinement: only :func:`early_parameters` are updated with Eq. 2
   (:mod:`monai_uda.methods.early_features.refinement`).

Outputs: with ``inference=False`` the forward returns the flat tuple
``(final_logits, early_logits_level_a[, early_logits_level_b])`` — for the default single head this is
``(final_logits, early_logits)`` — all at the input resolution. A flat tuple (not nested) keeps it
compatible with MONAI's sliding-window inference. With ``inference=True`` it returns the final
segmentation logits only (one tensor), no hook is registered, and the result equals the base network's.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

from monai_uda.networks.features import FeatureRecorder
from monai_uda.networks.unet import LEVEL_MODULES, UDAUNet

__all__ = [
    "EarlyFeaturesSegmentor",
    "SUPPORTED_LEVELS",
    "early_module_names",
    "early_parameters",
    "freeze_for_head_training",
    "freeze_for_refinement",
]

#: levels an early head can be attached to (0 = ``conv_0``, 1 = ``down_1``)
SUPPORTED_LEVELS = (0, 1)


def _check_levels(levels: Iterable[int]) -> tuple[int, ...]:
    levels = tuple(sorted(set(int(lv) for lv in levels)))
    if not levels:
        raise ValueError("`levels` must name at least one level, e.g. (0,) or (0, 1).")
    bad = [lv for lv in levels if lv not in SUPPORTED_LEVELS]
    if bad:
        raise ValueError(f"`levels` may only contain {SUPPORTED_LEVELS} (0 = conv_0, 1 = down_1), got {bad}.")
    return levels


def _base_network(net: nn.Module) -> UDAUNet:
    base = net.network if isinstance(net, EarlyFeaturesSegmentor) else net
    if not isinstance(base, UDAUNet):
        raise TypeError(f"expected a UDAUNet or an EarlyFeaturesSegmentor, got {type(net).__name__}.")
    return base


class EarlyFeaturesSegmentor(nn.Module):
    """A ``UDAUNet`` plus segmentation head(s) on its early features.

    Args:
        network: the (source-trained) base network; it is used, not copied.
        levels: levels to attach a head to: ``(0,)`` (the paper's method), ``(1,)`` or ``(0, 1)``.
        hidden_channels: channels of the head's hidden 3x3 conv layer; ``0`` gives a single 1x1 conv
            (a linear classifier on the early features). The paper does not specify the head; the
            default is one 3x3 conv (+ activation) and a 1x1 conv, i.e. a *small* head whose limited
            receptive field keeps the early prediction weaker than the final one (Appendix B).
        act: activation of the hidden layer (MONAI spec).
        inference: return only the final logits (one tensor). Can be changed later via the attribute.
        upsample_mode: interpolation used to bring level-1 logits to the input resolution;
            ``"linear"`` means bilinear in 2D and trilinear in 3D.

    Raises:
        TypeError: ``network`` is not a ``UDAUNet``.
        ValueError: unsupported ``levels`` or negative ``hidden_channels``.
    """

    def __init__(
        self,
        network: UDAUNet,
        levels: Sequence[int] = (0,),
        hidden_channels: int = 16,
        act: str | tuple = ("LeakyReLU", {"negative_slope": 0.1, "inplace": True}),
        inference: bool = False,
        upsample_mode: str = "linear",
    ):
        super().__init__()
        if not isinstance(network, UDAUNet):
            raise TypeError(f"`network` must be a monai_uda UDAUNet, got {type(network).__name__}.")
        if hidden_channels < 0:
            raise ValueError(f"`hidden_channels` must be >= 0, got {hidden_channels}.")
        self.network = network
        self.levels = _check_levels(levels)
        self.inference = bool(inference)
        self.upsample_mode = upsample_mode
        self.base_frozen = False
        dims, n_classes = network.spatial_dims, network.out_channels
        heads = {}
        for lv in self.levels:
            in_ch = network.level_channels(lv)
            layers: list[nn.Module] = []
            if hidden_channels > 0:
                layers.append(Convolution(dims, in_ch, hidden_channels, kernel_size=3, act=act, norm=None))
                in_ch = hidden_channels
            layers.append(Convolution(dims, in_ch, n_classes, kernel_size=1, conv_only=True))
            heads[str(lv)] = nn.Sequential(*layers)
        self.heads = nn.ModuleDict(heads)

    @property
    def module_names(self) -> list[str]:
        """Names (in ``network``) of the stages the heads read."""
        return [LEVEL_MODULES[lv] for lv in self.levels]

    def _upsample(self, logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        if tuple(logits.shape[2:]) == tuple(size):
            return logits
        mode = self.upsample_mode
        if mode == "linear":
            mode = "bilinear" if logits.ndim == 4 else "trilinear"
        kwargs = {} if mode == "nearest" else {"align_corners": False}
        return F.interpolate(logits, size=tuple(size), mode=mode, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Final logits (``inference=True``) or ``(final_logits, *early_logits)`` in ``levels`` order."""
        expected = self.network.spatial_dims + 2
        if x.ndim != expected:
            raise ValueError(
                f"input must be (batch, channels, *spatial) with {self.network.spatial_dims} spatial dims, "
                f"got shape {tuple(x.shape)}."
            )
        if x.shape[1] != self.network.in_channels:
            raise ValueError(f"input has {x.shape[1]} channels, the network expects {self.network.in_channels}.")
        if self.inference:
            return self.network(x)
        with FeatureRecorder(self.network, self.module_names) as rec:
            final = self.network(x)
        early = tuple(
            self._upsample(self.heads[str(lv)](rec.features[name]), x.shape[2:])
            for lv, name in zip(self.levels, self.module_names)
        )
        return (final, *early)

    def train(self, mode: bool = True) -> EarlyFeaturesSegmentor:
        """As ``nn.Module.train``, but a frozen base (see :func:`freeze_for_head_training`) stays in eval mode."""
        super().train(mode)
        if self.base_frozen:
            self.network.eval()
        return self


def early_module_names(levels: Sequence[int] = (0,), include_lower: bool = True) -> list[str]:
    """Names of the shared early stages refined for heads at ``levels``.

    With ``include_lower`` (default) every stage up to the deepest head is included: ``(0,)`` ->
    ``["conv_0"]``; ``(1,)`` or ``(0, 1)`` -> ``["conv_0", "down_1"]`` (Appendix C, "refine L1 and L2").
    Without it only the stages of ``levels`` themselves (``(1,)`` -> ``["down_1"]``, Appendix C
    "refine L1 then L2", second stage).
    """
    levels = _check_levels(levels)
    wanted = range(max(levels) + 1) if include_lower else levels
    return [LEVEL_MODULES[lv] for lv in wanted]


def early_parameters(
    net: nn.Module, levels: Sequence[int] | None = None, include_lower: bool = True
) -> list[nn.Parameter]:
    """The shared early-layer parameters: those of ``conv_0`` and, with level 1, ``down_1``.

    Args:
        net: a ``UDAUNet`` or an :class:`EarlyFeaturesSegmentor`.
        levels: head levels; defaults to the segmentor's ``levels`` (``(0,)`` for a bare network).
        include_lower: see :func:`early_module_names`.
    """
    base = _base_network(net)
    if levels is None:
        levels = net.levels if isinstance(net, EarlyFeaturesSegmentor) else (0,)
    params: list[nn.Parameter] = []
    for name in early_module_names(levels, include_lower):
        params.extend(getattr(base, name).parameters())
    return params


def freeze_for_head_training(segmentor: EarlyFeaturesSegmentor) -> list[nn.Parameter]:
    """Stage 2: freeze the whole base network; only the head(s) train (Sec. 2.2).

    Sets ``requires_grad=False`` on every base parameter and ``True`` on the head parameters, and marks
    the base as frozen so that ``segmentor.train()`` keeps it in eval mode — its BatchNorm statistics
    therefore stay bit-identical as well (a trainer calling ``network.train()`` each iteration, as
    MONAI's ``SupervisedTrainer`` does, cannot change them).

    Returns:
        the head parameters, to give to the optimiser.
    """
    if not isinstance(segmentor, EarlyFeaturesSegmentor):
        raise TypeError(f"`segmentor` must be an EarlyFeaturesSegmentor, got {type(segmentor).__name__}.")
    segmentor.network.requires_grad_(False)
    segmentor.heads.requires_grad_(True)
    segmentor.base_frozen = True
    segmentor.train(segmentor.training)
    return list(segmentor.heads.parameters())


def freeze_for_refinement(segmentor: EarlyFeaturesSegmentor, include_lower: bool = True) -> list[nn.Parameter]:
    """Stage 3: only the shared early layers train; the head(s) and the rest of the base are frozen.

    Sets ``requires_grad`` accordingly (so no gradient is even computed for frozen weights) and clears
    the head-training base freeze; which modules are in train mode during refinement is decided by the
    ``reestimate_bn`` option of :func:`monai_uda.methods.early_features.refinement.set_refinement_mode`.

    Returns:
        the early parameters, to give to the optimiser.
    """
    if not isinstance(segmentor, EarlyFeaturesSegmentor):
        raise TypeError(f"`segmentor` must be an EarlyFeaturesSegmentor, got {type(segmentor).__name__}.")
    segmentor.requires_grad_(False)
    params = early_parameters(segmentor, segmentor.levels, include_lower)
    for p in params:
        p.requires_grad_(True)
    segmentor.base_frozen = False
    return params
