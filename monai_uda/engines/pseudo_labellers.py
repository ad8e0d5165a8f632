"""Generic pseudo-labellers of the self-training engine (:mod:`monai_uda.engines.self_training`).

A pseudo-labeller is a small object called on the ``(C, *spatial)`` class probabilities of one target item::

    labeller(probs, round) -> label                      # (*spatial) int classes, IGNORE_INDEX = ignored
    labeller(probs, round) -> (label, keep)              # bool keep-mask: unkept pixels become IGNORE_INDEX
    labeller(probs, round) -> (label, weight)            # float per-pixel weight, saved next to the label

with two optional methods the engine calls when they exist:

- ``fit(probs_iter, round)``: set-level statistics (e.g. class-wise thresholds) from a first prediction
  pass over all target items, before labelling round ``round``;
- ``predict(model, items)``: replaces the engine's prediction (e.g. MC-dropout's stochastic passes,
  :class:`monai_uda.methods.buda.mc_dropout.MCDropoutLabeller`); it may yield ``(item, probs, extras)``,
  and ``extras`` (a dict of per-pixel maps) are passed to ``__call__`` as keyword arguments.

Here: :class:`ArgmaxLabeller` (plain self-training, the BUDA-Seg rounds of Li et al.) and
:class:`SelfTrainingSelector` (ST and CBST of Zou et al., the baselines of Sheikh and Schultz). PAST's
top-q labeller (Dong et al.) is :class:`monai_uda.methods.past.top_q.TopQSelector`.

ST / CBST (Zou et al., "Unsupervised domain adaptation for semantic segmentation via class-balanced
self-training", ECCV 2018). Notation: ``P`` is a (C, *spatial) softmax probability map of one target image,
``M = max_c P`` the confidence and ``LP = argmax_c P`` the predicted class of each pixel; ``p`` is the kept portion.

- **ST** (self-training, Zou et al. Alg. 1): one global threshold ``lambda``. Either fixed
  (``threshold=0.9``) or the portion rule: sort all confidences ``M`` in descending order and take
  ``lambda = M_sorted[floor(p * N)]`` (``N`` pixels). A pixel is kept iff ``M > lambda``; its label is
  ``LP``. Without ties exactly the top ``floor(p * N)`` pixels are kept.
- **CBST** (class-balanced self-training, Zou et al. Alg. 2): one threshold per class,
  ``lambda_c = M_c,sorted[floor(p * N_c)]`` where ``M_c`` are the confidences of the ``N_c`` pixels
  predicted as ``c`` (in Zou et al.'s notation ``lambda_c = exp(-k_c)``). The label is the class of the
  largest *normalised* probability ``P_c / lambda_c`` and the pixel is kept iff that maximum is ``> 1``
  (Zou et al., Eq. 8 solution). Per class, this keeps the top ``p`` portion of the pixels predicted
  as that class; rare classes (low ``lambda_c``) can additionally win pixels whose raw argmax was a
  frequent class — that is the class balancing.
- Schedule (Zou et al., Sec. 4): ``p_r = min(p_0 + r * delta, p_max)`` for round ``r = 0, 1, ...``,
  with the paper's ``p_0 = 0.2``, ``delta = 0.05``, ``p_max = 0.5``.

Unselected pixels get ``ignore_value`` (:data:`monai_uda.utils.IGNORE_INDEX`, 255). Thresholds are
computed from the image passed to the selector unless :meth:`SelfTrainingSelector.fit` was called for that round
with the whole target set —
Zou et al. compute them over all target images, which ``fit`` reproduces (it keeps the confidence and
predicted class of every pixel of the set in memory: 5 bytes per pixel).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from monai_uda.utils import IGNORE_INDEX

__all__ = ["ArgmaxLabeller", "SelfTrainingSelector", "portion_schedule", "portion_threshold"]


class ArgmaxLabeller:
    """The hard pseudo-label ``argmax_c probs`` of every pixel (plain self-training; Li et al., BUDA-Seg).

    ``ArgmaxLabeller()(probs, round)`` returns a ``(*spatial)`` int64 label; nothing is ignored.
    """

    def __call__(self, probs: torch.Tensor, round_index: int = 0) -> torch.Tensor:
        probs = torch.as_tensor(probs)
        if probs.ndim < 2:
            raise ValueError(f"`probs` must be (C, *spatial) class probabilities, got shape {tuple(probs.shape)}.")
        return probs.argmax(0)

    def __repr__(self) -> str:
        return "ArgmaxLabeller()"


def portion_schedule(round_index: int, start: float = 0.2, step: float = 0.05, maximum: float = 0.5) -> float:
    """Kept portion in round ``round_index`` (0-based): ``min(start + round_index * step, maximum)``."""
    if round_index < 0:
        raise ValueError(f"`round_index` must be >= 0, got {round_index}.")
    return float(min(start + round_index * step, maximum))


def portion_threshold(confidences: torch.Tensor, portion: float) -> float:
    """``sorted_desc(confidences)[floor(portion * N)]`` — keep ``M > threshold`` to keep the top portion.

    Returns ``+inf`` for an empty input (nothing can be kept) and ``-inf`` when ``floor(portion * N) >= N``
    (``portion == 1``: everything is kept).
    """
    if not 0.0 <= portion <= 1.0:
        raise ValueError(f"`portion` must be in [0, 1], got {portion}.")
    values = confidences.reshape(-1)
    n = values.numel()
    if n == 0:
        return math.inf
    k = int(math.floor(portion * n))
    if k >= n:
        return -math.inf
    # the (k+1)-th largest is the (n-k)-th smallest
    return float(torch.kthvalue(values.float().cpu(), n - k).values)


def _check_probs(probs: torch.Tensor) -> torch.Tensor:
    probs = torch.as_tensor(probs)
    if probs.ndim < 2 or probs.shape[0] < 2:
        raise ValueError(f"`probs` must be (C>=2, *spatial) class probabilities, got shape {tuple(probs.shape)}.")
    probs = probs.float()
    if not torch.isfinite(probs).all():
        raise ValueError("`probs` contains NaN or inf.")
    if probs.min() < 0 or probs.max() > 1 or not torch.allclose(probs.sum(0), torch.ones_like(probs[0]), atol=1e-3):
        raise ValueError("`probs` must be softmax probabilities (in [0, 1], summing to 1 over the channel axis).")
    return probs


class SelfTrainingSelector:
    """Pseudo-label selection of ST / CBST, as ``select_fn(probs, round) -> (label, keep)``.

    Args:
        mode: ``"st"`` (global threshold) or ``"cbst"`` (class-wise thresholds).
        portion: kept portion in round 0 (``p_0``).
        portion_step: increase of the portion per round (``delta``).
        max_portion: cap of the portion (``p_max``).
        threshold: ST only: a fixed global confidence threshold instead of the portion rule.
        ignore_value: label of unselected pixels.

    ``__call__(probs, round)`` takes (C, *spatial) probabilities and returns ``label`` (*spatial) int64
    with ``ignore_value`` where not selected, and ``keep`` (*spatial) bool, ``True`` where the pixel was
    selected — the pseudo-labeller contract of :mod:`monai_uda.engines.self_training`, whose rounds also
    call :meth:`fit` with the whole target set before labelling each round (Zou et al.'s set-level thresholds).
    """

    def __init__(
        self,
        mode: str = "cbst",
        portion: float = 0.2,
        portion_step: float = 0.05,
        max_portion: float = 0.5,
        threshold: float | None = None,
        ignore_value: int = IGNORE_INDEX,
    ):
        mode = mode.lower()
        if mode not in ("st", "cbst"):
            raise ValueError(f"`mode` must be 'st' or 'cbst', got {mode!r}.")
        for name, v in (("portion", portion), ("max_portion", max_portion)):
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"`{name}` must be in [0, 1], got {v}.")
        if portion_step < 0:
            raise ValueError(f"`portion_step` must be >= 0, got {portion_step}.")
        if threshold is not None and mode != "st":
            raise ValueError("`threshold` (a fixed global threshold) is only defined for mode='st'.")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"`threshold` must be in [0, 1], got {threshold}.")
        self.mode = mode
        self.portion = portion
        self.portion_step = portion_step
        self.max_portion = max_portion
        self.threshold = threshold
        self.ignore_value = ignore_value
        self._fitted: dict[int, torch.Tensor] = {}

    def portion_at(self, round_index: int) -> float:
        """The kept portion of round ``round_index``."""
        return portion_schedule(round_index, self.portion, self.portion_step, self.max_portion)

    def thresholds(self, probs: torch.Tensor | Iterable[torch.Tensor], round_index: int = 0) -> torch.Tensor:
        """Thresholds from one (C, *spatial) map or an iterable of them (the whole target set).

        Returns:
            ST: a 1-element tensor ``[lambda]``; CBST: a (C,) tensor ``[lambda_c]``.
        """
        maps = [probs] if isinstance(probs, torch.Tensor) else probs
        n_classes = None
        conf, pred = [], []
        for m in maps:  # streamed: only the confidences and argmax of each map are kept
            m = _check_probs(m)
            if n_classes is not None and m.shape[0] != n_classes:
                raise ValueError(f"all probability maps must have {n_classes} channels, got {m.shape[0]}.")
            n_classes = m.shape[0]
            c, lp = m.max(dim=0)
            conf.append(c.reshape(-1).cpu())
            small = n_classes <= torch.iinfo(torch.uint8).max
            pred.append(lp.reshape(-1).to(torch.uint8 if small else torch.int64).cpu())
        if n_classes is None:
            raise ValueError("`probs` is empty.")
        if self.mode == "st" and self.threshold is not None:
            return torch.tensor([float(self.threshold)])
        all_conf = torch.cat(conf)
        p = self.portion_at(round_index)
        if self.mode == "st":
            return torch.tensor([portion_threshold(all_conf, p)])
        all_pred = torch.cat(pred).long()
        return torch.tensor([portion_threshold(all_conf[all_pred == c], p) for c in range(n_classes)])

    def fit(self, probs: Iterable[torch.Tensor], round_index: int) -> torch.Tensor:
        """Compute the thresholds of ``round_index`` over the whole target set and use them from now on."""
        self._fitted[round_index] = self.thresholds(probs, round_index)
        return self._fitted[round_index]

    def __call__(self, probs: torch.Tensor, round_index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        probs = _check_probs(probs)
        lam = self._fitted.get(round_index)
        if lam is None:
            lam = self.thresholds(probs, round_index)
        lam = lam.to(probs.device)
        if self.mode == "st":
            conf, label = probs.max(dim=0)
            keep = conf > lam[0]
        else:
            if lam.numel() != probs.shape[0]:
                raise ValueError(f"fitted CBST thresholds have {lam.numel()} classes, `probs` has {probs.shape[0]}.")
            shape = (-1,) + (1,) * (probs.ndim - 1)
            # P_c / lambda_c; lambda_c = +inf (class never predicted) gives 0, lambda_c = -inf (keep all)
            # is clamped to the smallest positive float so that any P_c > 0 passes
            norm = probs / lam.reshape(shape).clamp_min(torch.finfo(probs.dtype).tiny)
            score, label = norm.max(dim=0)
            keep = score > 1.0
        label = torch.where(keep, label, torch.full_like(label, self.ignore_value))
        return label.long(), keep
