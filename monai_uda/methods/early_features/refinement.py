"""Self-training of early features: the losses and options of Sheikh & Schultz (MIDL 2022).

Notation of the paper: ``p_c(x_n)`` is the final (teacher) probability of class ``c`` at pixel ``n``,
``p~_c(x_n)`` the early head's (student) probability, ``y`` the one-hot source label.

- Eq. 1 (stages 1-2, source labels): ``l_source = -1/N_S sum_n sum_c y_{n,c} log p_c(x_n)``.
  :class:`EarlyHeadLoss` applies it to the early head(s) while the base is frozen.
- Eq. 2 (stage 3, unlabelled target): ``l_target = -1/N_T sum_n sum_c p_c(x_n) log p~_c(x_n)``, the
  cross-entropy between the *soft* final prediction used as pseudo-label and the early prediction
  (:func:`early_refinement_loss`). Only the shared early layers are updated; the head is frozen.
- Stopping: the Dice between the early and final segmentations (:func:`agreement_dice`) is tracked
  after each epoch; refinement stops once it changes by less than 0.005
  (:class:`monai_uda.methods.early_features.agreement_early_stop.AgreementEarlyStop`).

Options (explicit because the paper describes them only in words):

``detach_pseudo_label`` (default ``True``)
    Eq. 2 is minimised "only with respect to the early segmentation p~" (Sec. 2.2): the final
    prediction is a fixed target within a step (it still changes between steps through the refined
    early layers). Not detaching would also back-propagate through ``p`` into the early layers via the
    whole U-Net, i.e. also pull the strong teacher towards the weak student.
``reestimate_bn`` (default ``"all"``)
    Which BatchNorm layers run in train mode (normalising with batch statistics, their running
    statistics re-estimated on the target) during refinement: ``"none"``/``False`` (whole network in
    eval mode), ``"early"`` (only the BatchNorm layers of the refined early stages) or ``"all"``/``True``
    (every base layer; dropout is then active too). The paper refines "the early convolutional blocks"
    and states that the rest of the network "remain[s] unaffected"; ``"early"`` is the literal reading
    (every parameter and buffer after the early blocks stays bit-identical), but with it the refinement
    collapsed on the real pairs (single runs, 240 iterations: A1 0.342 with ``"early"`` against 0.519 with
    ``"all"``, D1 0.506 against 0.573), and on the embedded demo pair (seeds 0 1 2, demo budget) ``"early"``
    left the target Dice at 0.006 / 0.012 / 0.060 where ``"all"`` reached 0.020 / 0.051 / 0.371 (source
    0.001 / 0.003 / 0.000). So the default is ``"all"``: the deeper layers' weights stay those of the source
    (no gradient reaches them), only their BatchNorm statistics follow the target batches, as in AdaBN
    (Li et al., "Revisiting batch normalization for practical domain adaptation", 2016). Part of its
    gain is BatchNorm re-estimation itself: compare with the ``bn`` method. ``"none"`` adapts the early
    weights only (BatchNorm statistics stay those of the source). The heads have no normalisation layers
    and always stay in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.metrics import compute_dice
from monai.networks.utils import one_hot
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from monai_uda.methods.early_features.early_head import EarlyFeaturesSegmentor, early_module_names
from monai_uda.utils import IGNORE_INDEX

__all__ = [
    "BN_MODES",
    "EarlyHeadLoss",
    "EarlyRefinementLoss",
    "agreement_dice",
    "early_refinement_loss",
    "normalize_bn_mode",
    "set_refinement_mode",
    "split_outputs",
]

#: values of ``reestimate_bn`` after normalisation
BN_MODES = ("none", "early", "all")


def _as_tuple(early: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    return (early,) if isinstance(early, torch.Tensor) else tuple(early)


def split_outputs(outputs: torch.Tensor | Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Split an :class:`EarlyFeaturesSegmentor` training output ``(final, *early)`` into ``(final, early_tuple)``."""
    if isinstance(outputs, torch.Tensor) or len(outputs) < 2:
        raise ValueError(
            "expected the segmentor's training output (final_logits, early_logits, ...); got a single tensor — "
            "is the EarlyFeaturesSegmentor in inference mode?"
        )
    return outputs[0], tuple(outputs[1:])


def _check_logits(name: str, t: torch.Tensor, ref: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a tensor, got {type(t).__name__}.")
    if t.ndim < 3 or t.shape[1] < 2:
        raise ValueError(f"`{name}` must be (batch, classes>=2, *spatial) logits, got shape {tuple(t.shape)}.")
    if ref is not None and t.shape != ref.shape:
        raise ValueError(f"`{name}` has shape {tuple(t.shape)}, the final logits {tuple(ref.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"`{name}` contains NaN or inf.")


def early_refinement_loss(
    final_logits: torch.Tensor,
    early_logits: torch.Tensor | Sequence[torch.Tensor],
    detach_pseudo_label: bool = True,
) -> torch.Tensor:
    """Eq. 2: ``-1/N_T sum_n sum_c p_c(x_n) log p~_c(x_n)``, averaged over the early heads.

    Args:
        final_logits: (B, C, *spatial) final logits; ``p = softmax(final_logits)`` is the soft pseudo-label.
        early_logits: (B, C, *spatial) early-head logits (or a sequence of them, one per head level);
            ``log p~ = log_softmax(early_logits)``.
        detach_pseudo_label: treat ``p`` as a constant (see the module docstring).

    Returns:
        scalar loss, the mean over the ``N_T`` pixels of the batch (and over heads).
    """
    _check_logits("final_logits", final_logits)
    early = _as_tuple(early_logits)
    pseudo = torch.softmax(final_logits, dim=1)
    if detach_pseudo_label:
        pseudo = pseudo.detach()
    losses = []
    for i, e in enumerate(early):
        _check_logits(f"early_logits[{i}]", e, final_logits)
        # cross_entropy with class-probability targets is exactly -sum_c p_c log softmax(e)_c, mean over pixels
        losses.append(F.cross_entropy(e, pseudo))
    return torch.stack(losses).mean()


class EarlyRefinementLoss(nn.Module):
    """Eq. 2 as a module: ``loss(final_logits, early_logits)``; see :func:`early_refinement_loss`."""

    def __init__(self, detach_pseudo_label: bool = True):
        super().__init__()
        self.detach_pseudo_label = detach_pseudo_label

    def forward(self, final_logits: torch.Tensor, early_logits: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        return early_refinement_loss(final_logits, early_logits, self.detach_pseudo_label)


class EarlyHeadLoss(nn.Module):
    """Eq. 1 applied to the early head(s) for stage 2 (head training on source labels, base frozen).

    ``loss(outputs, label)``: ``outputs`` is the segmentor's training output ``(final, *early)`` (so it
    plugs into a MONAI ``SupervisedTrainer`` unchanged); ``label`` is (B, 1, *spatial) or (B, *spatial)
    class indices. The cross-entropy of every early head against ``label`` is averaged over heads; the
    final logits are ignored (the base is frozen).

    Args:
        ignore_index: label value excluded from the loss.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, outputs: Sequence[torch.Tensor], label: torch.Tensor) -> torch.Tensor:
        final, early = split_outputs(outputs)
        if label is None:
            raise ValueError("EarlyHeadLoss needs source labels (`label` is None).")
        target = label[:, 0] if label.ndim == final.ndim else label
        if target.shape != (final.shape[0], *final.shape[2:]):
            raise ValueError(f"`label` shape {tuple(label.shape)} does not match the logits {tuple(final.shape)}.")
        target = target.long()
        return torch.stack([F.cross_entropy(e, target, ignore_index=self.ignore_index) for e in early]).mean()


def agreement_dice(
    final_logits: torch.Tensor, early_logits: torch.Tensor, include_background: bool = False
) -> torch.Tensor:
    """Dice between the early and final (argmax) segmentations, per image (the stopping-rule signal).

    Classes absent from both segmentations count as full agreement (1.0), so the value is always defined.

    Returns:
        (B,) tensor: the mean Dice over classes (foreground classes unless ``include_background``).
    """
    _check_logits("final_logits", final_logits)
    _check_logits("early_logits", early_logits, final_logits)
    n = final_logits.shape[1]
    final_oh = one_hot(final_logits.argmax(1, keepdim=True), n)
    early_oh = one_hot(early_logits.argmax(1, keepdim=True), n)
    dice = compute_dice(early_oh, final_oh, include_background=include_background, ignore_empty=False)
    return dice.mean(dim=1)


def normalize_bn_mode(reestimate_bn: bool | str) -> str:
    """Map ``reestimate_bn`` (``False``/``True``/``"none"``/``"early"``/``"all"``) to one of :data:`BN_MODES`."""
    if reestimate_bn is True:
        return "all"
    if reestimate_bn is False or reestimate_bn is None:
        return "none"
    mode = str(reestimate_bn).lower()
    if mode not in BN_MODES:
        raise ValueError(f"`reestimate_bn` must be a bool or one of {BN_MODES}, got {reestimate_bn!r}.")
    return mode


def set_refinement_mode(segmentor: EarlyFeaturesSegmentor, reestimate_bn: bool | str = "early") -> None:
    """Put ``segmentor`` in the train/eval state of one refinement step (see ``reestimate_bn`` above).

    Heads are always in eval mode; ``"none"``: everything eval; ``"early"``: the BatchNorm layers of the
    refined early stages in train mode; ``"all"``: the whole base network in train mode.
    """
    if not isinstance(segmentor, EarlyFeaturesSegmentor):
        raise TypeError(f"expected an EarlyFeaturesSegmentor, got {type(segmentor).__name__}.")
    mode = normalize_bn_mode(reestimate_bn)
    segmentor.base_frozen = False
    segmentor.eval()
    if mode == "all":
        segmentor.network.train()
    elif mode == "early":
        for name in early_module_names(segmentor.levels):
            for m in getattr(segmentor.network, name).modules():
                if isinstance(m, _BatchNorm):
                    m.train()
