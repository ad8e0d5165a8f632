"""Shallow-to-deep (Matskevych et al.): the math of the Prediction Enhancer input and of the
pseudo-label network (Section 2.2), written to read like the paper.

Pseudo-label network loss (Eq. 1/5)::

    L = L_R(phi_f(x), y_hat) + L_{R,c}(phi_f(x), phi_g(x))          R in {BCE, Dice}

- ``phi_f`` is the student (parameters ``theta_f``), ``phi_g`` its exponential moving average, the
  mean teacher: ``theta_g <- alpha * theta_g + (1 - alpha) * theta_f`` with ``alpha = 0.999`` (Eq. 2,
  :func:`ema_update`).
- ``L_{R,c}`` is the consistency term between student and teacher probabilities, with the same loss
  as for the pseudo-labels: Dice (Eq. 3) or BCE (Eq. 4) (:func:`consistency_loss`).
- ``y`` are the enhancer's soft foreground probabilities in ``[0, 1]`` (not hard labels), rectified per
  class ``y_hat_k = w_k * y_k`` (Eq. 6) with ``w_1 = 1 - |p_1 - eta_1|`` (Eq. 7) where ``p_1`` is the
  network's foreground probability and ``eta_1`` the exponential average (``lambda = 0.999``) of the mean
  foreground prediction over pixels whose pseudo-label is foreground, ``y_1 > 0.5`` (Eq. 8); ``w_0``
  "in the same manner" with ``p_0 = 1 - p_1``, ``y_0 = 1 - y_1`` (:func:`update_class_means`,
  :func:`rectification_weights`, :func:`rectify`).

Consistency and rectification are switchable (the ablation of Table 7) in :class:`Shallow2DeepLoss`.

Reading notes / deviations (the equations as printed are not losses):

- Eq. 3 is the Dice *coefficient* (a similarity); the loss used is ``1 - Eq. 3``.
- Eq. 4 as printed, ``1/N sum p_g log p_f + (1 - p_g)(1 - log p_f)``, has a sign and a typo; the
  standard soft binary cross entropy ``-1/N sum p_g log p_f + (1 - p_g) log(1 - p_f)`` is used.
- The teacher's prediction is a target (no gradient), as in Mean Teacher; the rectification weights
  are computed from the detached student prediction (they weight the loss, they are not optimised).
- ``eta`` starts from the first batch's mean (Eq. 8 gives no initial value; starting from 0 with
  ``lambda = 0.999`` would take thousands of steps to forget); ``eta_init`` sets a fixed start instead.
  ``eta`` is updated with the current batch before the weights are computed; a class with no pixel in
  ``S`` leaves its ``eta`` unchanged.
- With BCE both classes are rectified, ``-mean(y_hat_1 log p_1 + y_hat_0 log p_0)``; Dice is computed on
  the foreground channel (the paper's binary setting), so only ``w_1`` enters it.
- :func:`ema_update` also averages floating-point buffers (BatchNorm running statistics) and copies
  integer ones (``num_batches_tracked``); the paper does not say (``buffers="copy"`` / ``"none"`` switch).

Prediction Enhancer input convention (Section 2.1: "using Random Forest predictions (but not the raw
data) as input"): :func:`as_forest_probability` tags a forest's foreground probability as a
``MetaTensor`` with ``meta["s2d_input"] == "rf_foreground_probability"``; :class:`PredictionEnhancer`
refuses any input without that tag (or with more than one channel, or values outside ``[0, 1]``), and
:func:`enhancer_training_sample` builds its training pairs only through a forest.
"""

from __future__ import annotations

import copy
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from torch import nn

from monai_uda.methods.shallow2deep.forests import predict_foreground

__all__ = [
    "ENHANCER_INPUT_KEY",
    "RF_PROBABILITY",
    "make_teacher",
    "ema_update",
    "foreground_probability",
    "dice_coefficient",
    "soft_bce",
    "consistency_loss",
    "update_class_means",
    "rectification_weights",
    "rectify",
    "Shallow2DeepLoss",
    "as_forest_probability",
    "check_enhancer_input",
    "PredictionEnhancer",
    "enhancer_training_sample",
]

#: meta key and value marking a Random Forest foreground probability (the only enhancer input)
ENHANCER_INPUT_KEY = "s2d_input"
RF_PROBABILITY = "rf_foreground_probability"


# ------------------------------------------------------------------------------------ mean teacher, Eq. 2
def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of ``student`` to be used as the mean teacher ``phi_g`` (initialised with ``theta_f``)."""
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, alpha: float = 0.999, buffers: str = "ema") -> None:
    """Eq. 2: ``theta_g <- alpha * theta_g + (1 - alpha) * theta_f``, in place on ``teacher``.

    Args:
        teacher: the EMA network ``phi_g``.
        student: the trained network ``phi_f`` (same architecture).
        alpha: smoothing coefficient (0.999 in the paper, after Tarvainen and Valpola).
        buffers: ``"ema"`` (float buffers averaged like parameters, others copied), ``"copy"`` or ``"none"``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    if buffers not in ("ema", "copy", "none"):
        raise ValueError(f"buffers must be 'ema', 'copy' or 'none', got {buffers!r}.")
    t_params, s_params = dict(teacher.named_parameters()), dict(student.named_parameters())
    if t_params.keys() != s_params.keys():
        raise ValueError("teacher and student have different parameters; the teacher must be a copy of the student.")
    for name, tp in t_params.items():
        sp = s_params[name]
        if tp.shape != sp.shape:
            raise ValueError(f"parameter {name!r}: teacher shape {tuple(tp.shape)} != student shape {tuple(sp.shape)}.")
        tp.mul_(alpha).add_(sp.detach(), alpha=1.0 - alpha)
    if buffers == "none":
        return
    s_bufs = dict(student.named_buffers())
    for name, tb in teacher.named_buffers():
        if name not in s_bufs:
            raise ValueError(f"buffer {name!r} of the teacher is missing in the student.")
        sb = s_bufs[name]
        if buffers == "ema" and tb.is_floating_point():
            tb.mul_(alpha).add_(sb, alpha=1.0 - alpha)
        else:
            tb.copy_(sb)


# ------------------------------------------------------------------------------------ losses, Eq. 3-5
def _log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p_0, log p_1)`` of shape ``(B, 1, *spatial)`` from 1-channel (sigmoid) or 2-channel (softmax) logits."""
    if logits.ndim < 3:
        raise ValueError(f"logits must be (B, C, *spatial), got shape {tuple(logits.shape)}.")
    if logits.shape[1] == 1:
        return F.logsigmoid(-logits), F.logsigmoid(logits)
    if logits.shape[1] == 2:
        lp = F.log_softmax(logits, dim=1)
        return lp[:, :1], lp[:, 1:]
    raise ValueError(f"binary segmentation needs 1 (sigmoid) or 2 (softmax) logit channels, got {logits.shape[1]}.")


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """``p_1`` of shape ``(B, 1, *spatial)`` from 1-channel (sigmoid) or 2-channel (softmax) logits."""
    return _log_probs(logits)[1].exp()


def dice_coefficient(p: torch.Tensor, q: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Eq. 3: ``2 sum_i p_i q_i / (sum_i p_i^2 + sum_i q_i^2)`` over all pixels of the batch."""
    return (2.0 * (p * q).sum() + eps) / ((p * p).sum() + (q * q).sum() + eps)


def soft_bce(log_p0: torch.Tensor, log_p1: torch.Tensor, target1: torch.Tensor, target0: torch.Tensor | None = None):
    """``-1/N sum_i t1_i log p1_i + t0_i log p0_i`` with ``t0 = 1 - t1`` unless given (rectified labels)."""
    if target0 is None:
        target0 = 1.0 - target1
    return -(target1 * log_p1 + target0 * log_p0).mean()


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """Consistency term ``L_{R,c}(p_f, p_g)`` (Eq. 3 as ``1 - Dice`` or Eq. 4 as soft BCE); ``p_g`` has no gradient."""
    p_g = foreground_probability(teacher_logits.detach())
    if kind == "dice":
        return 1.0 - dice_coefficient(foreground_probability(student_logits), p_g)
    if kind == "bce":
        log_p0, log_p1 = _log_probs(student_logits)
        return soft_bce(log_p0, log_p1, p_g)
    raise ValueError(f"kind must be 'bce' or 'dice', got {kind!r}.")


# ------------------------------------------------------------------------------------ rectification, Eq. 6-8
@torch.no_grad()
def update_class_means(
    eta: torch.Tensor | None, p1: torch.Tensor, y1: torch.Tensor, lam: float = 0.999
) -> torch.Tensor:
    """Eq. 8 for both classes: ``eta_k <- lam * eta_k + (1 - lam) * mean(S_k)``.

    ``S_1 = {p_1(x) : y_1(x) > 0.5}`` and ``S_0 = {p_0(x) : y_0(x) > 0.5}`` with ``p_0 = 1 - p_1``,
    ``y_0 = 1 - y_1``, over all pixels ``x`` of the batch. ``eta=None`` starts at ``mean(S_k)``; a class
    with empty ``S_k`` keeps its value (or ``nan`` if it has none yet).

    Returns:
        the new ``eta = [eta_0, eta_1]`` (a new tensor).
    """
    p1, y1 = p1.detach().float(), y1.detach().float()
    if p1.shape != y1.shape:
        raise ValueError(f"p1 shape {tuple(p1.shape)} != y1 shape {tuple(y1.shape)}.")
    new = torch.full((2,), float("nan"), device=p1.device) if eta is None else eta.detach().clone().float()
    for k, (pk, yk) in enumerate(((1.0 - p1, 1.0 - y1), (p1, y1))):
        sel = yk > 0.5
        if not sel.any():
            continue
        m = pk[sel].mean()
        new[k] = m if torch.isnan(new[k]) else lam * new[k] + (1.0 - lam) * m
    return new


def rectification_weights(p1: torch.Tensor, eta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7: ``w_1 = 1 - |p_1 - eta_1|`` and ``w_0 = 1 - |p_0 - eta_0|`` (``p_0 = 1 - p_1``); no gradient.

    A class whose ``eta`` is still undefined (``nan``) gets weight 1.
    """
    p1 = p1.detach()
    w1 = 1.0 - (p1 - eta[1]).abs() if not torch.isnan(eta[1]) else torch.ones_like(p1)
    w0 = 1.0 - ((1.0 - p1) - eta[0]).abs() if not torch.isnan(eta[0]) else torch.ones_like(p1)
    return w0, w1


def rectify(y1: torch.Tensor, w0: torch.Tensor, w1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: ``y_hat_k = w_k * y_k`` for ``k = 0, 1``; returns ``(y_hat_0, y_hat_1)`` with ``y_0 = 1 - y_1``."""
    return w0 * (1.0 - y1), w1 * y1


class Shallow2DeepLoss(nn.Module):
    """Pseudo-label loss of Eq. 1/5 with switchable consistency (Sec. 2.2.1) and rectification (Sec. 2.2.2).

    Args:
        loss: ``"bce"`` or ``"dice"`` (used for both the pseudo-label and the consistency term).
        consistency: add the mean-teacher consistency term (needs ``teacher_logits``).
        rectification: rectify the pseudo-labels (Eq. 6-8).
        lam: EMA factor ``lambda`` of Eq. 8 (0.999 in the paper).
        consistency_weight: weight of the consistency term (1 in Eq. 1).
        eta_init: fixed start ``(eta_0, eta_1)`` for Eq. 8; ``None`` = first batch's means.

    ``forward(student_logits, pseudo_label, teacher_logits=None)``: logits ``(B, 1|2, *spatial)``,
    ``pseudo_label`` the enhancer's foreground probability ``(B, 1, *spatial)`` in ``[0, 1]``. Returns the
    scalar loss; ``last_terms`` holds the detached terms; ``eta`` is a buffer (saved in ``state_dict``).
    Call ``forward`` in training only: each call advances ``eta``.
    """

    def __init__(
        self,
        loss: str = "bce",
        consistency: bool = True,
        rectification: bool = True,
        lam: float = 0.999,
        consistency_weight: float = 1.0,
        eta_init: Sequence[float] | None = None,
    ):
        super().__init__()
        if loss not in ("bce", "dice"):
            raise ValueError(f"loss must be 'bce' or 'dice', got {loss!r}.")
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}.")
        self.loss, self.consistency, self.rectification = loss, bool(consistency), bool(rectification)
        self.lam, self.consistency_weight = float(lam), float(consistency_weight)
        init = torch.full((2,), float("nan")) if eta_init is None else torch.as_tensor(eta_init, dtype=torch.float32)
        if init.shape != (2,):
            raise ValueError(f"eta_init must be (eta_0, eta_1), got {eta_init}.")
        self.register_buffer("eta", init.clone())
        self.last_terms: dict[str, float] = {}

    def forward(
        self, student_logits: torch.Tensor, pseudo_label: torch.Tensor, teacher_logits: torch.Tensor | None = None
    ) -> torch.Tensor:
        y1 = torch.as_tensor(pseudo_label, device=student_logits.device).float()
        if y1.shape[0] != student_logits.shape[0] or y1.shape[1] != 1 or y1.shape[2:] != student_logits.shape[2:]:
            raise ValueError(
                f"pseudo_label must be (B, 1, *spatial) matching logits {tuple(student_logits.shape)}, "
                f"got {tuple(y1.shape)}."
            )
        if not torch.isfinite(y1).all() or y1.min() < 0 or y1.max() > 1:
            raise ValueError("pseudo_label must be finite soft labels in [0, 1].")
        log_p0, log_p1 = _log_probs(student_logits)
        p1 = log_p1.exp()
        if self.rectification:
            eta = update_class_means(None if torch.isnan(self.eta).all() else self.eta, p1, y1, self.lam)
            self.eta.copy_(eta)
            y0_hat, y1_hat = rectify(y1, *rectification_weights(p1, self.eta))
        else:
            y0_hat, y1_hat = 1.0 - y1, y1
        if self.loss == "bce":
            main = soft_bce(log_p0, log_p1, y1_hat, y0_hat)
        else:
            main = 1.0 - dice_coefficient(p1, y1_hat)
        total = main
        self.last_terms = {"pseudo_label": float(main.detach())}
        if self.consistency:
            if teacher_logits is None:
                raise ValueError("consistency=True needs teacher_logits (the mean teacher's output).")
            if teacher_logits.shape != student_logits.shape:
                raise ValueError(
                    f"teacher_logits shape {tuple(teacher_logits.shape)} != student {tuple(student_logits.shape)}."
                )
            cons = consistency_loss(student_logits, teacher_logits, self.loss)
            total = total + self.consistency_weight * cons
            self.last_terms["consistency"] = float(cons.detach())
        return total


# ------------------------------------------------------------------------------------ Prediction Enhancer input
def as_forest_probability(prob, forest_index: int | None = None) -> MetaTensor:
    """Tag a Random Forest foreground probability as the Prediction Enhancer's input.

    Args:
        prob: ``(1, *spatial)`` (or batched ``(B, 1, *spatial)``) probabilities in ``[0, 1]``, e.g. from
            :func:`monai_uda.methods.shallow2deep.forests.predict_foreground`.
        forest_index: optional index of the forest that produced it (stored in the meta data).
    """
    t = torch.as_tensor(np.asarray(prob) if not isinstance(prob, torch.Tensor) else prob).float()
    single_channel = t.ndim >= 3 and (t.shape[0] == 1 or (t.ndim >= 4 and t.shape[1] == 1))
    if not single_channel:
        raise ValueError(f"a forest probability is (1, *spatial) or (B, 1, *spatial), got shape {tuple(t.shape)}.")
    if not torch.isfinite(t).all() or t.min() < 0 or t.max() > 1:
        raise ValueError("a forest probability must be finite and in [0, 1].")
    meta = dict(prob.meta) if isinstance(prob, MetaTensor) else {}
    meta[ENHANCER_INPUT_KEY] = RF_PROBABILITY
    if forest_index is not None:
        meta["s2d_forest_index"] = int(forest_index)
    return MetaTensor(t.as_tensor() if isinstance(t, MetaTensor) else t, meta=meta)


def check_enhancer_input(x: torch.Tensor, require_tag: bool = True) -> None:
    """Raise unless ``x`` is a batched Random Forest probability ``(B, 1, *spatial)`` in ``[0, 1]``.

    With ``require_tag`` (default) ``x`` must carry the tag of :func:`as_forest_probability` (also after
    MONAI collation). Without it (e.g. inside ``sliding_window_inference``, which drops meta data) only the
    channel count and value range are checked.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 4:
        shape = getattr(x, "shape", "")
        raise ValueError(f"the Prediction Enhancer takes a batch (B, 1, *spatial), got {type(x).__name__} {shape}.")
    if require_tag:
        tag = x.meta.get(ENHANCER_INPUT_KEY) if isinstance(x, MetaTensor) else None
        tags = tag if isinstance(tag, (list, tuple)) else [tag]
        if not tags or any(t != RF_PROBABILITY for t in tags):
            raise ValueError(
                "the Prediction Enhancer only takes Random Forest foreground probabilities, never raw images: "
                "make its input with as_forest_probability()/enhancer_training_sample() "
                f"(meta[{ENHANCER_INPUT_KEY!r}] == {RF_PROBABILITY!r}); got {tag!r}."
            )
    if x.shape[1] != 1:
        raise ValueError(f"the Prediction Enhancer takes 1 channel (a forest probability), got {x.shape[1]} channels.")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ValueError("the Prediction Enhancer input must be a probability in [0, 1] (raw images are not allowed).")


class PredictionEnhancer(nn.Module):
    """Wraps the enhancer network (e.g. a ``UDAUNet`` with 1 input channel) and checks every input with
    :func:`check_enhancer_input`, so that it never receives raw images.

    Args:
        network: the segmentation network mapping a forest probability to logits.
        require_tag: require the forest-probability tag (set ``False`` only where MONAI drops meta data,
            e.g. ``sliding_window_inference``; channel count and range are still checked).
    """

    def __init__(self, network: nn.Module, require_tag: bool = True):
        super().__init__()
        in_ch = getattr(network, "in_channels", 1)
        if in_ch != 1:
            raise ValueError(f"the enhancer network must take 1 input channel (a forest probability), it has {in_ch}.")
        self.network = network
        self.require_tag = require_tag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_enhancer_input(x, self.require_tag)
        return self.network(x.as_tensor() if isinstance(x, MetaTensor) else x)


def enhancer_training_sample(
    forests: Sequence, features, label, rng: np.random.Generator | int | None = None
) -> tuple[MetaTensor, torch.Tensor]:
    """One Prediction Enhancer training pair (Section 2.1): a randomly drawn source forest's foreground
    probability (not the raw image) and the dense ground truth.

    Args:
        forests: the source forests (:func:`monai_uda.methods.shallow2deep.forests.train_source_forests`).
        features: ``(F, *spatial)`` pixel features of the source image (a raw image is rejected: its
            channel count does not match the forests').
        label: dense binary ground truth ``(1, *spatial)`` or ``(*spatial)``.
        rng: numpy Generator or seed that picks the forest.

    Returns:
        ``(rf_prob, label)``: tagged ``(1, *spatial)`` probability and float ``(1, *spatial)`` label in ``{0, 1}``.
    """
    if len(forests) == 0:
        raise ValueError("forests is empty.")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    k = int(rng.integers(len(forests)))
    prob = predict_foreground(forests[k], features)
    lab = torch.as_tensor(np.asarray(label.detach().cpu() if hasattr(label, "detach") else label))
    if lab.shape == prob.shape[1:]:
        lab = lab[None]
    if lab.shape != prob.shape:
        raise ValueError(f"label shape {tuple(lab.shape)} does not match the features' spatial shape {prob.shape[1:]}.")
    return as_forest_probability(prob, forest_index=k), (lab > 0).float()
