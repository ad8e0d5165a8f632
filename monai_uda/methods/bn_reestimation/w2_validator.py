"""``w2_shift``: the target-normalised W2 feature shift (Stenger et al., Sec. 3.3) as a model-selection validator.

A network normalises each BatchNorm layer's input with the statistics stored in that layer (``running_mean``,
``running_var``: what it was trained, or re-estimated, with). On the target images the same inputs have their
own mean and variance. ``w2_shift`` fits a diagonal Gaussian to every BatchNorm layer's input on the target
images (the truth, and the normaliser) and compares it with the stored Gaussian (the estimate) by the
target-normalised squared W2 of Eq. (5) (:func:`~.wasserstein.layerwise_distances` with
``covariance="diagonal"``, the channels as BatchNorm sees them), divided by the layer's channel count and
averaged over the layers (:func:`~.wasserstein.aggregate_distance`). The score is the **negated** distance, so
that higher = predicted better, as for every validator (0: the stored statistics are the target's).

This is :mod:`.wasserstein`'s label-free domain-shift indicator with the statistics stored in the network in
place of a second pass over source images: for the source model it is the shift as the network sees it; an
adapted model whose normalisation still expects other features scores lower. Caveat: BatchNorm re-estimation
writes target statistics into the network and so scores near 0 by construction (exactly so with ``mode="reset"``
on the same images); the score favours it, and says nothing of the decoder's decisions. Use it next to the
prediction-based validators, not alone.

Cost: one forward pass per image (hooks on the BatchNorm inputs), through the candidate's inferer.

The validator is registered when this module is imported (the generic ``monai_uda.validators`` must not import a
method package): ``monai-uda select`` imports every ``monai_uda/methods/<method>/*_validator.py``; a bundle
config that names ``w2_shift`` adds ``"$import monai_uda.methods.bn_reestimation.w2_validator"`` to its imports.
"""

from __future__ import annotations

from typing import Sequence

import torch
from monai.inferers import Inferer, SimpleInferer

from monai_uda.validators.predictions import Candidate, check_images, eval_mode
from monai_uda.validators.registry import register_validator

from .reestimation import list_norm_layers
from .wasserstein import GaussianStats, aggregate_distance, layerwise_distances, running_statistics

__all__ = ["NAME", "target_feature_shift", "w2_shift_score"]

#: the registered name
NAME = "w2_shift"


class _DiagonalMoments:
    """Per-channel mean and variance of ``(B, C, *spatial)`` features, merged over calls (float64, Chan et al.)."""

    def __init__(self):
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        obs = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()
        n_b = obs.shape[1]
        if n_b == 0:
            return
        mean_b = obs.mean(1)
        m2_b = ((obs - mean_b[:, None]) ** 2).sum(1)
        mean_b, m2_b = mean_b.cpu(), m2_b.cpu()
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * n_b / n)
        self.n = n

    def stats(self, layer: str) -> GaussianStats:
        if self.n < 2:
            raise ValueError(f"w2_shift: layer {layer!r} saw fewer than 2 feature values on the target images")
        var = self.m2 / (self.n - 1)
        if not (torch.isfinite(self.mean).all() and torch.isfinite(var).all()):
            raise ValueError(f"w2_shift: non-finite features at layer {layer!r}; check the target images")
        return GaussianStats(self.mean.clone(), torch.diag(var), self.n)


def target_feature_shift(network: torch.nn.Module, images: Sequence[torch.Tensor], inferer: Inferer | None = None,
                         device: str | torch.device = "cpu", layers: Sequence[str] | None = None,
                         eps: float = 1e-6) -> list[dict]:
    """Per BatchNorm layer, the target-normalised W2 between its input on ``images`` and its stored statistics.

    Args:
        network: a network with BatchNorm layers (running statistics); run in eval mode, no gradients, not modified.
        images: target images ``(C, *spatial)``.
        inferer: a MONAI inferer (``SimpleInferer`` by default); its windows are what the layers see.
        device: where the network runs.
        layers: sub-module names (default: every norm layer with running statistics, in forward order).
        eps: relative ridge of :func:`~.wasserstein.normalized_wasserstein2_squared`.

    Returns:
        The rows of :func:`~.wasserstein.layerwise_distances` (target = truth, stored = estimate).
    """
    images = check_images(images)
    names = [n for n, _ in list_norm_layers(network)] if layers is None else list(layers)
    if not names:
        raise ValueError(f"{NAME}: {type(network).__name__} has no norm layer with running statistics")
    modules = dict(network.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"{NAME} layers {missing} are not sub-modules of {type(network).__name__}")
    moments = {n: _DiagonalMoments() for n in names}
    handles = [modules[n].register_forward_pre_hook(lambda mod, inputs, n=n: moments[n].update(inputs[0]))
               for n in names]
    network.to(device)
    try:
        with eval_mode(network), torch.no_grad():
            for x in images:
                (inferer or SimpleInferer())(torch.as_tensor(x).unsqueeze(0).to(device=device, dtype=torch.float32),
                                             network)
    finally:
        for h in handles:
            h.remove()
    truth = {n: moments[n].stats(n) for n in names}
    return layerwise_distances(truth, running_statistics(network, names), covariance="diagonal", eps=eps)


def w2_shift_score(network: torch.nn.Module, images: Sequence[torch.Tensor], inferer: Inferer | None = None,
                   device: str | torch.device = "cpu", layers: Sequence[str] | None = None, eps: float = 1e-6) -> float:
    """The negated mean over layers of the per-channel target-normalised W2 (0 = no shift; higher = better)."""
    return 0.0 - aggregate_distance(target_feature_shift(network, images, inferer, device, layers, eps))


@register_validator(NAME, needs={"network"})
def _w2_shift(candidate: Candidate, layers: Sequence[str] | None = None, eps: float = 1e-6) -> float:
    return w2_shift_score(candidate.network, candidate.images, candidate.inferer, candidate.device, layers, eps)
