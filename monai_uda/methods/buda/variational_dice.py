"""BUDA-Seg's variational sampling Dice loss (Li et al., Eq. 1-3).

For logits O and variance map V (both ``(B, C, *spatial)``) and a (pseudo-)label Ŷ:

- Eq. 1: ``Ô_k = O + ε_k · V`` with ``ε_k ~ N(0, 1)`` drawn independently for every pixel, class and
  sample ``k = 1..K`` (the paper samples ``Ô_u ~ N(O_u, V_u²)`` "for each pixel u");
- Eq. 2: ``Dice_k = 1 - 2 Σ_u P_k,u Ŷ_u / (Σ_u P_k,u² + Σ_u Ŷ_u²)`` with ``P_k = softmax(Ô_k)``,
  computed per image and per class and averaged over them (MONAI's convention);
- Eq. 3: ``Loss = (1/K) Σ_k Dice_k``.

All K samples are one broadcast tensor op on the device: the network runs once.

Eq. 2 is exactly MONAI's ``DiceLoss(squared_pred=True, softmax=True)`` (MONAI 1.6 computes
``Σ P·Y`` as ``(|P|² + |Y|² - |P-Y|²)/2``, algebraically the same, and adds ``smooth_nr``/``smooth_dr``
to numerator/denominator); the no-variance ablation (paper Fig. 5) therefore reuses it through
:func:`plain_dice_loss`. :func:`squared_dice_loss` writes Eq. 2 out so that it broadcasts over K
without copying the label K times.

Pseudo-labels may mark unlabelled pixels with ``ignore_index`` (:data:`monai_uda.utils.IGNORE_INDEX`, 255,
the value written by :class:`~monai_uda.engines.self_training.PseudoLabelRounds`); those pixels are removed from every
sum of Eq. 2 (prediction and label alike, as MONAI's ``ignore_index`` does).
"""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_uda.utils import IGNORE_INDEX

__all__ = ["VariationalSamplingDiceLoss", "squared_dice_loss", "plain_dice_loss", "prepare_target"]


def prepare_target(
    target: torch.Tensor, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One-hot label ``(B, C, *spatial)`` and validity mask ``(B, 1, *spatial)`` (None: all valid).

    Args:
        target: index label ``(B, 1, *spatial)`` (values in ``[0, C)`` or ``ignore_index``), or one-hot /
            soft label ``(B, C, *spatial)`` (pixels whose channels are all zero are ignored when
            ``ignore_index`` is not None).
        num_classes: C.
        ignore_index: label value of ignored pixels, or None.
    """
    if target.ndim < 3:
        raise ValueError(f"target must be (B, 1 or C, *spatial), got shape {tuple(target.shape)}.")
    if target.shape[1] == 1 and num_classes > 1:
        idx = target.long()
        mask = None
        if ignore_index is not None:
            valid = idx != ignore_index
            mask = valid.to(torch.float32)
            idx = torch.where(valid, idx, torch.zeros_like(idx))
        if idx.numel() and (idx.min() < 0 or idx.max() >= num_classes):
            raise ValueError(
                f"target holds label values outside [0, {num_classes}) (ignore_index={ignore_index}): "
                f"min {int(idx.min())}, max {int(idx.max())}."
            )
        onehot = torch.zeros((idx.shape[0], num_classes, *idx.shape[2:]), dtype=torch.float32, device=idx.device)
        onehot.scatter_(1, idx, 1.0)
        if mask is not None:
            onehot = onehot * mask
        return onehot, mask
    if target.shape[1] != num_classes:
        raise ValueError(f"target has {target.shape[1]} channels; expected 1 (index label) or {num_classes} (one-hot).")
    onehot = target.float()
    mask = (onehot.sum(1, keepdim=True) > 0).to(onehot.dtype) if ignore_index is not None else None
    return onehot, mask


def squared_dice_loss(
    probs: torch.Tensor,
    onehot: torch.Tensor,
    mask: torch.Tensor | None = None,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> torch.Tensor:
    """Eq. 2 per image and class: ``1 - (2 Σ P·Y + s_nr) / (Σ P² + Σ Y² + s_dr)``.

    Args:
        probs: ``(..., B, C, *spatial)`` probabilities (leading dims, e.g. the K samples, broadcast).
        onehot: ``(B, C, *spatial)`` label, zero at ignored pixels.
        mask: ``(B, 1, *spatial)`` validity mask or None.
        smooth_nr: added to the numerator; smooth_dr: added to the denominator (0, 0 is Eq. 2 verbatim).
        batch: also sum over the batch before dividing (one Dice per class).

    Returns:
        ``(..., B, C)``, or ``(..., C)`` when ``batch``.
    """
    if mask is not None:
        probs = probs * mask
    spatial = tuple(range(-(onehot.ndim - 2), 0))
    inter = (probs * onehot).sum(spatial)
    p2 = (probs * probs).sum(spatial)
    y2 = (onehot * onehot).sum(spatial)  # (B, C); equals Σ Y for hard labels
    if batch:
        inter, p2, y2 = inter.sum(-2), p2.sum(-2), y2.sum(-2)
    return 1.0 - (2.0 * inter + smooth_nr) / (p2 + y2 + smooth_dr)


def plain_dice_loss(
    include_background: bool = True,
    ignore_index: int | None = IGNORE_INDEX,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> DiceLoss:
    """The no-variance ablation: MONAI ``DiceLoss(squared_pred=True, softmax=True)`` = Eq. 2 on O itself.

    Takes logits and an index label ``(B, 1, *spatial)`` (``to_onehot_y=True``); ``ignore_index`` pixels
    are excluded.
    """
    return DiceLoss(
        include_background=include_background,
        to_onehot_y=True,
        softmax=True,
        squared_pred=True,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        batch=batch,
        ignore_index=ignore_index,
    )


class VariationalSamplingDiceLoss(_Loss):
    """Variational sampling Dice loss, Eq. 1-3 of Li et al. (BUDA-Seg).

    Example::

        net = VarianceUNet(UDAUNet(out_channels=5))
        loss_fn = VariationalSamplingDiceLoss(num_samples=4)
        loss = loss_fn(net(image), pseudo_label)  # net(image) is (O, V); pseudo_label (B, 1, H, W)

    Args:
        num_samples: K, the number of Gaussian samples of Eq. 1.
        include_background: keep class 0 in the average of Eq. 2 over classes.
        ignore_index: label value excluded from the loss (None: none).
        smooth_nr: small constant added to the numerator of Eq. 2.
        smooth_dr: small constant added to the denominator of Eq. 2 (keeps empty classes finite).
        batch: sum Eq. 2's sums over the batch too (one Dice per class) instead of per image.
        reduction: ``"mean"`` (scalar, Eq. 3 averaged over images and classes), ``"sum"``, or ``"none"``
            (the K-average of Eq. 3 per image and class, ``(B, C)``; ``(C,)`` when ``batch``).
        generator: optional ``torch.Generator`` for ε (on the device of the logits).
        seed: draw ε from a generator of the loss's own, seeded with ``seed`` (:meth:`set_random_state`),
            so that the variance loss never consumes the global random stream: the data order, crops and
            augmentation of a run are the same with and without it. ``None`` (and no ``generator``): ε comes
            from the global stream.
    """

    def __init__(
        self,
        num_samples: int = 4,
        include_background: bool = True,
        ignore_index: int | None = IGNORE_INDEX,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        reduction: LossReduction | str = LossReduction.MEAN,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ):
        super().__init__(reduction=LossReduction(reduction).value)
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}.")
        self.num_samples = int(num_samples)
        self.include_background = include_background
        self.ignore_index = ignore_index
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)
        self.batch = batch
        self.generator = generator
        self._seed: int | None = None
        if seed is not None:
            self.set_random_state(seed)

    def set_random_state(self, seed: int) -> VariationalSamplingDiceLoss:
        """Restart ε's own stream from ``seed`` (MONAI's ``Randomizable`` convention; the self-training engine
        calls it at the start of every round with the round's seed, so a resumed run draws the same ε)."""
        self._seed = int(seed)
        self.generator = None  # made on the logits' device at the next draw
        return self

    def sample_noise(self, logits: torch.Tensor) -> torch.Tensor:
        """ε of Eq. 1: ``(K, *logits.shape)`` standard normal."""
        if self._seed is not None and (self.generator is None or self.generator.device != logits.device):
            self.generator = torch.Generator(device=logits.device).manual_seed(self._seed)
        return torch.randn(
            (self.num_samples, *logits.shape), device=logits.device, dtype=logits.dtype, generator=self.generator
        )

    def forward(
        self,
        input: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
        target: torch.Tensor,
        variance: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            input: logits O ``(B, C, *spatial)``, or the pair ``(O, V)`` returned by
                :class:`~monai_uda.methods.buda.variance_head.VarianceUNet`.
            target: index pseudo-label ``(B, 1, *spatial)`` or one-hot ``(B, C, *spatial)``.
            variance: V (same shape as O, >= 0) if not given inside ``input``. Without any V the loss is
                Eq. 2 on O (K identical samples, computed once).
            noise: optional ε ``(K, *O.shape)`` (or broadcastable to it) replacing the random draw.
        """
        if isinstance(input, (tuple, list)):
            if len(input) != 2 or variance is not None:
                raise ValueError("input must be logits or a pair (logits, variance), with variance not given twice.")
            input, variance = input
        if input.ndim < 3:
            raise ValueError(f"input must be (B, C, *spatial) logits, got shape {tuple(input.shape)}.")
        num_classes = input.shape[1]
        if num_classes < 2:
            raise ValueError("input must have at least 2 channels (softmax over classes).")
        if target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match input {tuple(input.shape)}.")
        onehot, mask = prepare_target(target, num_classes, self.ignore_index)
        onehot = onehot.to(input.dtype)
        if mask is not None and bool(mask.all()):
            mask = None  # nothing ignored: skip a (K, B, C, ...) product and its gradient
        mask = None if mask is None else mask.to(input.dtype)

        if variance is None:
            samples = input.unsqueeze(0)  # (1, B, C, ...)
        else:
            if variance.shape != input.shape:
                raise ValueError(
                    f"variance shape {tuple(variance.shape)} must equal logits shape {tuple(input.shape)}."
                )
            with torch.no_grad():  # two reductions, no temporaries: min < 0 or a NaN/inf anywhere
                lo, hi = torch.aminmax(variance.detach())
                bad = bool(lo < 0) or not bool(torch.isfinite(lo + hi))
            if bad:
                raise ValueError("variance must be finite and non-negative (use VarianceUNet's softplus output).")
            eps = self.sample_noise(input) if noise is None else noise.to(device=input.device, dtype=input.dtype)
            if eps.ndim == input.ndim + 1 and eps.shape[0] != self.num_samples:
                raise ValueError(f"noise has {eps.shape[0]} samples, expected num_samples={self.num_samples}.")
            samples = torch.addcmul(input.unsqueeze(0), eps, variance.unsqueeze(0))  # Eq. 1, (K, B, C, ...)
        probs = torch.softmax(samples, dim=2)
        if not self.include_background:
            probs, onehot = probs[:, :, 1:], onehot[:, 1:]
        dice = squared_dice_loss(probs, onehot, mask, self.smooth_nr, self.smooth_dr, self.batch)  # Eq. 2
        loss = dice.mean(0)  # Eq. 3: average over the K samples
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        if self.reduction == LossReduction.NONE.value:
            return loss
        raise ValueError(f'Unsupported reduction: {self.reduction}, available options are ["mean", "sum", "none"].')
