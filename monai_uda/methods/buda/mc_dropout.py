"""Wu et al.'s MC-dropout uncertainty rectification (MICCAI 2021), the baseline of Li et al.'s Table 2 (BUDA-Seg).

Li et al. (Li et al.) only says that Wu et al. insert dropout layers into the UNet and need *several
forward passes during both training and testing*; Wu et al.'s abstract adds that the uncertainty is the
standard deviation of the MC-dropout predictions. The loss below is therefore a documented standard
form of uncertainty rectification, not a transcription of Wu et al.'s code:

- ``T`` stochastic passes with dropout active give probabilities ``p_t`` (``T, B, C, *spatial``);
- mean prediction ``p̄ = (1/T) Σ_t p_t`` and uncertainty ``u = mean_c std_t(p_t)`` (``B, 1, *spatial``);
- rectified loss ``L = Σ_u w_u CE(p̄_u, ŷ_u) / Σ_u 1`` over labelled pixels, with ``w = exp(-u / scale)``
  (detached): uncertain pixels of the noisy pseudo-label count less;
- rectified pseudo-labels: ``argmax p̄``, and pixels with ``u > threshold`` set to the ignore value
  :data:`monai_uda.utils.IGNORE_INDEX` (255).

In the self-training engine (:mod:`monai_uda.engines.self_training`) the baseline is a configuration:
:class:`MCDropoutLabeller` is the pseudo-labeller (its ``predict`` runs the ``T`` passes with the engine's
predictor, its ``__call__`` rectifies), :class:`MCDropoutInferer` the training inferer and
:class:`UncertaintyRectifiedLoss` the loss of a plain MONAI ``SupervisedTrainer``.

During training all ``T`` passes stay in the autograd graph (the loss is taken on their mean), which is
what makes the method ~T times as costly in time and activation memory as one pass.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator, Sequence

import torch
from monai.inferers import Inferer
from monai.utils import LossReduction
from torch.nn.modules.loss import _Loss

from monai_uda.utils import IGNORE_INDEX

__all__ = [
    "dropout_modules",
    "mc_dropout_mode",
    "mc_dropout_probs",
    "mc_dropout_uncertainty",
    "rectify_pseudo_label",
    "UncertaintyRectifiedLoss",
    "mc_dropout_train_step",
    "MCDropoutInferer",
    "MCDropoutLabeller",
]

_DROPOUT_TYPES = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)


def dropout_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The dropout layers of ``model`` with p > 0; ValueError if there are none (MC-dropout needs them)."""
    mods = [m for m in model.modules() if isinstance(m, _DROPOUT_TYPES) and m.p > 0]
    if not mods:
        raise ValueError(
            f"{type(model).__name__} has no dropout layer with p > 0; MC-dropout needs one "
            "(e.g. UDAUNet(dropout=0.1))."
        )
    return mods


@contextlib.contextmanager
def mc_dropout_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Evaluation mode (BatchNorm uses running statistics) with dropout layers active; restores modes."""
    modes = {m: m.training for m in model.modules()}
    drops = dropout_modules(model)
    model.eval()
    for m in drops:
        m.train()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.train(mode)


def mc_dropout_probs(model: torch.nn.Module, image: torch.Tensor, num_passes: int = 4) -> torch.Tensor:
    """Softmax probabilities of ``num_passes`` stochastic forward passes, stacked: ``(T, B, C, *spatial)``.

    Runs in the caller's mode and grad context (use :func:`mc_dropout_mode` and ``torch.no_grad`` for
    pseudo-labelling; training mode keeps every pass in the graph).
    """
    if int(num_passes) < 2:
        raise ValueError(f"num_passes must be >= 2 for an MC-dropout uncertainty, got {num_passes}.")
    dropout_modules(model)
    return torch.stack([torch.softmax(model(image), dim=1) for _ in range(int(num_passes))])


def mc_dropout_uncertainty(prob_samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean prediction ``p̄`` ``(B, C, ...)`` and uncertainty ``u = mean_c std_t p_t`` ``(B, 1, ...)``."""
    if prob_samples.ndim < 4:
        raise ValueError(f"prob_samples must be (T, B, C, *spatial), got shape {tuple(prob_samples.shape)}.")
    mean = prob_samples.mean(0)
    unc = prob_samples.std(0, unbiased=False).mean(1, keepdim=True)
    return mean, unc


def rectify_pseudo_label(
    mean_probs: torch.Tensor,
    uncertainty: torch.Tensor,
    threshold: float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``argmax p̄`` as ``(B, 1, ...)`` int64, with pixels of uncertainty > ``threshold`` set to ``ignore_index``."""
    label = mean_probs.argmax(1, keepdim=True)
    if threshold is not None:
        label = torch.where(uncertainty > threshold, torch.full_like(label, ignore_index), label)
    return label


class UncertaintyRectifiedLoss(_Loss):
    """Uncertainty-weighted cross-entropy of the MC mean prediction against a pseudo-label.

    ``L = mean over labelled pixels of exp(-u/scale) · (-log p̄[ŷ])`` (module docstring).

    Args:
        uncertainty_scale: ``scale`` in ``exp(-u / scale)``; 1.0 is the plain ``exp(-u)`` weighting.
        ignore_index: pseudo-label value excluded from the loss.
        eps: added inside the log.
        reduction: ``"mean"`` over labelled pixels, ``"sum"``, or ``"none"`` (per-pixel map, 0 where ignored).
    """

    def __init__(
        self,
        uncertainty_scale: float = 1.0,
        ignore_index: int | None = IGNORE_INDEX,
        eps: float = 1e-6,
        reduction: LossReduction | str = LossReduction.MEAN,
    ):
        super().__init__(reduction=LossReduction(reduction).value)
        if not uncertainty_scale > 0:
            raise ValueError(f"uncertainty_scale must be > 0, got {uncertainty_scale}.")
        self.uncertainty_scale = float(uncertainty_scale)
        self.ignore_index = ignore_index
        self.eps = float(eps)

    def forward(self, prob_samples: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            prob_samples: ``(T, B, C, *spatial)`` probabilities of the MC passes.
            target: index pseudo-label ``(B, 1, *spatial)``.
        """
        mean, unc = mc_dropout_uncertainty(prob_samples)
        if target.shape[0] != mean.shape[0] or target.shape[1] != 1 or target.shape[2:] != mean.shape[2:]:
            raise ValueError(
                f"target must be (B, 1, *spatial) matching {tuple(mean.shape)}, got {tuple(target.shape)}."
            )
        idx = target.long()
        valid = torch.ones_like(idx, dtype=torch.bool) if self.ignore_index is None else idx != self.ignore_index
        idx = torch.where(valid, idx, torch.zeros_like(idx))
        if idx.numel() and int(idx.max()) >= mean.shape[1]:
            raise ValueError(f"target holds label {int(idx.max())} >= number of classes {mean.shape[1]}.")
        nll = -torch.log(mean.gather(1, idx) + self.eps)
        weight = torch.exp(-unc.detach() / self.uncertainty_scale)
        per_pixel = weight * nll * valid
        if self.reduction == LossReduction.MEAN.value:
            return per_pixel.sum() / valid.sum().clamp_min(1)
        if self.reduction == LossReduction.SUM.value:
            return per_pixel.sum()
        return per_pixel


def mc_dropout_train_step(
    model: torch.nn.Module,
    image: torch.Tensor,
    pseudo_label: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    num_passes: int = 4,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """One training step of the MC-dropout baseline: ``num_passes`` passes in the graph, rectified loss, step.

    Args:
        model: network with dropout (p > 0); put in training mode here.
        image: ``(B, in_channels, *spatial)``.
        pseudo_label: ``(B, 1, *spatial)`` index label (:data:`~monai_uda.utils.IGNORE_INDEX` = ignored).
        optimizer: optimiser over ``model``'s parameters.
        num_passes: T stochastic passes (4 in the paper's Table 2 comparison).
        loss_fn: ``(prob_samples, pseudo_label) -> loss``; :class:`UncertaintyRectifiedLoss` by default.

    Returns:
        ``{"loss": float, "uncertainty": float}`` (mean uncertainty of the step).
    """
    loss_fn = UncertaintyRectifiedLoss() if loss_fn is None else loss_fn
    model.train()
    optimizer.zero_grad(set_to_none=True)
    probs = mc_dropout_probs(model, image, num_passes)
    loss = loss_fn(probs, pseudo_label)
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"MC-dropout loss is not finite ({value}).")
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        unc = float(mc_dropout_uncertainty(probs.detach())[1].mean())
    return {"loss": value, "uncertainty": unc}


class MCDropoutInferer(Inferer):
    """MONAI inferer running ``num_passes`` stochastic passes: returns ``(T, B, C, *spatial)`` probabilities.

    Lets a plain ``SupervisedTrainer`` train the MC-dropout baseline: its ``loss_function``
    (:class:`UncertaintyRectifiedLoss`) receives the stacked passes, all in the autograd graph.

    Args:
        num_passes: T stochastic forward passes (>= 2).
    """

    def __init__(self, num_passes: int = 4) -> None:
        super().__init__()
        if int(num_passes) < 2:
            raise ValueError(f"num_passes must be >= 2 for an MC-dropout uncertainty, got {num_passes}.")
        self.num_passes = int(num_passes)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args, **kwargs) -> torch.Tensor:
        return mc_dropout_probs(network, inputs, self.num_passes)


class MCDropoutLabeller:
    """Pseudo-labeller of the MC-dropout baseline: ``T`` stochastic passes, their mean, uncertainty, rectification.

    ``predict(model, items)`` replaces the engine's prediction: for every item, ``num_passes`` passes of the
    ``predictor``'s inference (MONAI sliding window, dropout active, BatchNorm in evaluation mode,
    :func:`mc_dropout_mode`) give the mean probabilities ``p̄`` and the uncertainty ``u``
    (:func:`mc_dropout_uncertainty`), both mapped back to the item's array space by the predictor; it yields ``(item, p̄, {"uncertainty": u})``.
    ``__call__(probs, round, uncertainty=None)`` is :func:`rectify_pseudo_label`: ``argmax p̄``, and pixels with
    ``u > threshold`` set to ``ignore_index`` (no threshold: plain argmax).

    Args:
        predictor: the engine's :class:`~monai_uda.engines.self_training.SlidingWindowPredictor` (its transform
            and inferer are used for every pass).
        num_passes: T stochastic passes (>= 2).
        threshold: uncertainty above which a pixel is ignored (None: none is).
        ignore_index: label of ignored pixels.
    """

    def __init__(
        self, predictor: Any, num_passes: int = 4, threshold: float | None = None, ignore_index: int = IGNORE_INDEX
    ) -> None:
        if int(num_passes) < 2:
            raise ValueError(f"num_passes must be >= 2 for an MC-dropout uncertainty, got {num_passes}.")
        if not callable(getattr(predictor, "predict", None)) or not callable(getattr(predictor, "probabilities", None)):
            raise TypeError("predictor must provide predict(model, items, forward) and probabilities(network, image).")
        self.predictor = predictor
        self.num_passes = int(num_passes)
        self.threshold = None if threshold is None else float(threshold)
        self.ignore_index = int(ignore_index)

    def forward(self, network: torch.nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean probabilities ``(1, C, ...)`` and uncertainty ``(1, 1, ...)`` of ``num_passes`` dropout passes."""
        with mc_dropout_mode(network):
            samples = torch.stack([self.predictor.probabilities(network, image) for _ in range(self.num_passes)])
        mean, unc = mc_dropout_uncertainty(samples)
        return {"pred": mean, "uncertainty": unc}

    def predict(self, model: torch.nn.Module, items: Sequence[Any]) -> Iterator[tuple]:
        """``(item, mean probabilities (C, *spatial), {"uncertainty": (1, *spatial)})`` for every item."""
        yield from self.predictor.predict(model, items, forward=self.forward)

    def __call__(
        self, probs: torch.Tensor, round_index: int = 0, uncertainty: torch.Tensor | None = None
    ) -> torch.Tensor:
        probs = torch.as_tensor(probs)
        if self.threshold is None or uncertainty is None:
            return probs.argmax(0)
        unc = torch.as_tensor(uncertainty)
        if unc.shape != (1, *probs.shape[1:]):
            raise ValueError(f"uncertainty must be (1, *spatial) = {(1, *probs.shape[1:])}, got {tuple(unc.shape)}.")
        return rectify_pseudo_label(probs[None], unc[None], self.threshold, self.ignore_index)[0, 0]
