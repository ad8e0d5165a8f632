"""Target-normalised Wasserstein-2 distance between Gaussian feature statistics (Stenger et al., Sec. 3.3).

The features of a layer (channels = variables, every batch element and spatial position = one
observation) are summarised by a Gaussian ``N(mean, cov)``. Between a *true* target Gaussian
``N(mu_t, S_t)`` and an *estimate* ``N(mu_hat, S_hat)``:

- Eq. (2), squared Wasserstein-2 (Fréchet) distance, multivariate closed form
  ``W2^2 = |mu_t - mu_hat|^2 + tr(S_t + S_hat - 2 (S_t^1/2 S_hat S_t^1/2)^1/2)``; in 1-D it is
  ``sigma_t^2 + sigma_hat^2 - 2 sigma_t sigma_hat + (mu_t - mu_hat)^2`` (the paper's Eq. 2 prints the
  first ``+`` as a product, a typo). MONAI's ``monai.metrics.fid.compute_frechet_distance`` computes it.
- Eq. (5), target-normalised: ``W2^2 / sigma_t^2 = 1 + sigma_hat^2/sigma_t^2 - 2 sigma_hat/sigma_t
  + (mu_t - mu_hat)^2/sigma_t^2`` (the printed ``sigma_hat^2/sigma_t`` is a typo for ``/sigma_t^2``).
  Its multivariate extension used here whitens both Gaussians with the true target covariance,
  ``x -> S_t^{-1/2} (x - mu_t)``, and takes the W2^2 of the results, ``N(0, I)`` versus
  ``N(S_t^{-1/2}(mu_hat - mu_t), S_t^{-1/2} S_hat S_t^{-1/2})``; it is affine invariant, asymmetric
  (normalised by the target) and equals Eq. (5) in 1-D and the sum of Eq. (5) over channels for
  diagonal covariances. ``per_channel`` values divide by the number of channels so that layers of
  different widths compare; the aggregate over layers is their mean.

Two uses (``adaptation_distance`` and ``domain_shift_distance``):

- the paper's measure: an adapted model (estimate) versus a reference model supervised on the
  target (the "true" target statistics), both run on target images;
- the label-free domain-shift indicator: one model on source images (estimate, the statistics it
  was trained with) versus the same model on target images (truth), normalised by the target.

Features are read with forward hooks (by default the *inputs* of the BatchNorm layers, the ``z``
of Algorithm 1), never by modifying the network.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from monai.metrics.fid import compute_frechet_distance
from torch import nn

from monai_uda.methods.bn_reestimation.reestimation import batch_to_tensor, list_norm_layers

__all__ = [
    "GaussianStats",
    "FeatureMoments",
    "wasserstein2_squared",
    "normalized_wasserstein2_squared",
    "feature_statistics",
    "running_statistics",
    "layerwise_distances",
    "aggregate_distance",
    "adaptation_distance",
    "domain_shift_distance",
]


@dataclass
class GaussianStats:
    """Mean ``(C,)`` and covariance ``(C, C)`` (float64) of ``n`` observations of ``C`` channels."""

    mean: torch.Tensor
    cov: torch.Tensor
    n: int = 0

    @property
    def channels(self) -> int:
        return int(self.mean.numel())

    def diagonal(self) -> "GaussianStats":
        """The same Gaussian with the off-diagonal covariances dropped (independent channels, as BatchNorm sees them)."""
        return GaussianStats(self.mean, torch.diag(torch.diagonal(self.cov)), self.n)


class FeatureMoments:
    """Running mean and covariance of channel features, merged over batches in float64.

    Each batch ``(B, C, *spatial)`` contributes ``B * prod(spatial)`` observations of ``C`` variables;
    batch moments are centred on the batch mean (float64) and merged with the multivariate
    form of Chan et al.'s update, so the result is the exact population moments of all observations.

    Args:
        unbiased: covariance divided by ``n - 1`` (True, as ``numpy.cov``) or ``n``.
    """

    def __init__(self, unbiased: bool = True):
        self.unbiased = unbiased
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None  # sum of outer products of deviations

    def update(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"features must be (batch, channels, ...), got shape {tuple(x.shape)}.")
        c = x.shape[1]
        obs = x.detach().transpose(0, 1).reshape(c, -1).double()  # float64: covariances are often near-singular
        n_b = obs.shape[1]
        if n_b == 0:
            return
        mean_b = obs.mean(dim=1)
        centred = obs - mean_b[:, None]
        m2_b = (centred @ centred.T).cpu()
        mean_b = mean_b.cpu()
        if not (torch.isfinite(mean_b).all() and torch.isfinite(m2_b).all()):
            raise ValueError("non-finite (NaN/Inf) feature values; check the input images.")
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        if mean_b.numel() != self.mean.numel():
            raise ValueError(f"channel count changed between batches: {self.mean.numel()} then {mean_b.numel()}.")
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + torch.outer(delta, delta) * (self.n * n_b / n)
        self.n = n

    def stats(self) -> GaussianStats:
        if self.n < 2 or self.mean is None or self.m2 is None:
            raise ValueError(f"need at least 2 feature observations for a covariance, got {self.n}.")
        return GaussianStats(self.mean.clone(), self.m2 / (self.n - 1 if self.unbiased else self.n), self.n)


def _check(mu: torch.Tensor, cov: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    mu = torch.as_tensor(mu, dtype=torch.float64).reshape(-1)
    cov = torch.as_tensor(cov, dtype=torch.float64)
    if cov.dim() == 0:
        cov = cov.reshape(1, 1)
    elif cov.dim() == 1:  # diagonal given as variances
        cov = torch.diag(cov)
    if cov.shape != (mu.numel(), mu.numel()):
        raise ValueError(f"{what}: covariance of shape {tuple(cov.shape)} does not match a mean of {mu.numel()} channels.")
    if not (torch.isfinite(mu).all() and torch.isfinite(cov).all()):
        raise ValueError(f"{what}: non-finite mean or covariance.")
    return mu, cov


def wasserstein2_squared(mu_t, cov_t, mu_hat, cov_hat) -> float:
    """Eq. (2): squared W2 between ``N(mu_t, cov_t)`` and ``N(mu_hat, cov_hat)`` (MONAI's Fréchet distance).

    Covariances may be ``(C, C)`` matrices or ``(C,)`` variances (diagonal); means ``(C,)``.
    """
    mu_t, cov_t = _check(mu_t, cov_t, "target")
    mu_hat, cov_hat = _check(mu_hat, cov_hat, "estimate")
    if mu_t.numel() != mu_hat.numel():
        raise ValueError(f"channel counts differ: target {mu_t.numel()}, estimate {mu_hat.numel()}.")
    if _is_diagonal(cov_t) and _is_diagonal(cov_hat):  # closed form, no matrix square root
        s_t, s_h = torch.diagonal(cov_t).clamp_min(0).sqrt(), torch.diagonal(cov_hat).clamp_min(0).sqrt()
        return float(((mu_t - mu_hat) ** 2).sum() + ((s_t - s_h) ** 2).sum())
    cov_t, cov_hat = _psd(cov_t), _psd(cov_hat)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy's "Matrix is singular" for rank-deficient features
            d = float(compute_frechet_distance(mu_t, cov_t, mu_hat, cov_hat).real)
        if math.isfinite(d):
            return max(d, 0.0)
    except ValueError:  # MONAI's sqrtm of the (non-symmetric) product failed on a near-singular case
        pass
    return _frechet_symmetric(mu_t, cov_t, mu_hat, cov_hat)


def _frechet_symmetric(mu_t, cov_t, mu_hat, cov_hat) -> float:
    """Eq. (2) through the symmetric form ``tr((S_t^1/2 S_hat S_t^1/2)^1/2)`` (eigh only; PSD inputs)."""
    evals, evecs = torch.linalg.eigh(cov_t)
    root_t = (evecs * evals.clamp_min(0).sqrt()) @ evecs.T
    m = root_t @ cov_hat @ root_t
    cross = torch.linalg.eigvalsh(0.5 * (m + m.T)).clamp_min(0).sqrt().sum()
    return float(max(((mu_t - mu_hat) ** 2).sum() + torch.trace(cov_t) + torch.trace(cov_hat) - 2 * cross, 0.0))


def _is_diagonal(cov: torch.Tensor) -> bool:
    return bool(torch.count_nonzero(cov - torch.diag(torch.diagonal(cov))) == 0)


def _psd(cov: torch.Tensor) -> torch.Tensor:
    """Symmetrise and clip negative eigenvalues (rounding noise) to 0."""
    cov = 0.5 * (cov + cov.T)
    if _is_diagonal(cov):
        return cov.clamp_min(0)
    evals, evecs = torch.linalg.eigh(cov)
    return (evecs * evals.clamp_min(0)) @ evecs.T


def _regularize(cov_t: torch.Tensor, cov_hat: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Project both covariances to PSD and add the same ``delta * I``, ``delta = eps * mean target variance``.

    Feature covariances are often (nearly) singular (dead ReLU channels, collinear channels, few
    observations); a common ridge keeps the whitening finite and leaves identical Gaussians at
    distance 0. ``eps`` is used as an absolute ridge when all target variances are 0.
    """
    cov_t, cov_hat = _psd(cov_t), _psd(cov_hat)
    c = cov_t.shape[0]
    mean_var = float(torch.trace(cov_t)) / c
    delta = eps * mean_var if mean_var > 1e-150 else max(eps, 1e-150)
    eye = torch.eye(c, dtype=torch.float64)
    return cov_t + delta * eye, cov_hat + delta * eye, delta


def _inv_sqrt_psd(cov: torch.Tensor, floor: float = 0.0) -> torch.Tensor:
    """``cov^{-1/2}`` of a symmetric PSD matrix (eigendecomposition; eigenvalues floored at ``floor``)."""
    cov = 0.5 * (cov + cov.T)
    evals, evecs = torch.linalg.eigh(cov)
    evals = evals.clamp_min(max(floor, torch.finfo(torch.float64).tiny))
    return (evecs * evals.rsqrt()) @ evecs.T


def _whiten(mu_t, cov_t, mu_hat, cov_hat, floor: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The estimate in the target's whitened coordinates: ``(S_t^-1/2 (mu_hat - mu_t), S_t^-1/2 S_hat S_t^-1/2)``."""
    w = _inv_sqrt_psd(cov_t, floor)
    cov_w = w @ cov_hat @ w
    return w @ (mu_hat - mu_t), 0.5 * (cov_w + cov_w.T)


def normalized_wasserstein2_squared(mu_t, cov_t, mu_hat, cov_hat, eps: float = 1e-6) -> float:
    """Eq. (5), target-normalised squared W2 (multivariate by whitening with the target covariance).

    ``W2^2( N(0, I), N(S_t^{-1/2}(mu_hat - mu_t), S_t^{-1/2} S_hat S_t^{-1/2}) )``; in 1-D
    ``1 + s_hat^2/s_t^2 - 2 s_hat/s_t + (mu_t - mu_hat)^2 / s_t^2``.

    Args:
        mu_t, cov_t: the true target Gaussian (the normaliser).
        mu_hat, cov_hat: the estimate.
        eps: ridge ``eps * mean target variance`` added to both covariances (singular features).
    """
    mu_t, cov_t = _check(mu_t, cov_t, "target")
    mu_hat, cov_hat = _check(mu_hat, cov_hat, "estimate")
    if mu_t.numel() != mu_hat.numel():
        raise ValueError(f"channel counts differ: target {mu_t.numel()}, estimate {mu_hat.numel()}.")
    cov_t, cov_hat, delta = _regularize(cov_t, cov_hat, eps)
    if _is_diagonal(cov_t) and _is_diagonal(cov_hat):  # sum over channels of Eq. (5)
        var_t = torch.diagonal(cov_t).clamp_min(torch.finfo(torch.float64).tiny)
        ratio = torch.diagonal(cov_hat).clamp_min(0) / var_t
        return float((1.0 + ratio - 2.0 * ratio.sqrt() + (mu_t - mu_hat) ** 2 / var_t).sum())
    mu_w, cov_w = _whiten(mu_t, cov_t, mu_hat, cov_hat)
    # Fréchet distance to N(0, I): |mu_w|^2 + tr(cov_w) + C - 2 tr(cov_w^1/2). cov_w is symmetric PSD,
    # so its square root comes from eigh (stable), not from the general sqrtm of a product that
    # MONAI's compute_frechet_distance needs for two arbitrary covariances.
    evals = torch.linalg.eigvalsh(cov_w).clamp_min(0)
    return float(max((mu_w**2).sum() + evals.sum() + mu_w.numel() - 2.0 * evals.sqrt().sum(), 0.0))


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None) -> list[str]:
    if layers is None:
        names = [n for n, _ in list_norm_layers(model)]
        if not names:
            raise ValueError(
                f"{type(model).__name__} has no BatchNorm/InstanceNorm layer with running statistics; "
                "pass layers=[...] (sub-module names) explicitly."
            )
        return names
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"layers {missing} are not sub-modules of {type(model).__name__}.")
    return list(layers)


def feature_statistics(
    model: nn.Module,
    data: Iterable,
    layers: Sequence[str] | None = None,
    *,
    where: str = "input",
    image_key: str = "image",
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    progress: bool = False,
) -> dict[str, GaussianStats]:
    """Gaussian statistics (mean, full covariance over channels) of layer features on ``data``.

    The model runs in eval mode under ``torch.no_grad``; it is not modified (hooks only).

    Args:
        model: the network.
        data: iterable of batches (tensors, dicts with ``image_key``, or tuples).
        layers: sub-module names; default all norm layers with running statistics.
        where: ``"input"`` (features entering the layer, default) or ``"output"``.
        image_key: key of the image in dict batches.
        device: defaults to the model's device.
        max_batches: stop after this many batches.
        progress: tqdm progress bar.
    """
    if where not in ("input", "output"):
        raise ValueError(f"where must be 'input' or 'output', got {where!r}.")
    names = _resolve_layers(model, layers)
    modules = dict(model.named_modules())
    acc = {n: FeatureMoments() for n in names}
    if device is None:
        ref = next(iter(model.parameters()), None)
        device = ref.device if ref is not None else torch.device("cpu")

    def hook(name: str):
        if where == "input":
            return lambda mod, inputs: acc[name].update(inputs[0])
        return lambda mod, inputs, output: acc[name].update(output)

    handles = [
        modules[n].register_forward_pre_hook(hook(n)) if where == "input" else modules[n].register_forward_hook(hook(n))
        for n in names
    ]
    was_training = model.training
    from tqdm import tqdm

    try:
        model.eval()
        with torch.no_grad():
            for i, batch in enumerate(tqdm(data, desc="feature statistics", disable=not progress)):
                if max_batches is not None and i >= max_batches:
                    break
                model(batch_to_tensor(batch, image_key).to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for n in names:
        if acc[n].n == 0:
            raise ValueError(f"layer {n!r} was never called (or data is empty); no statistics.")
        out[n] = acc[n].stats()
    return out


def running_statistics(model: nn.Module, layers: Sequence[str] | None = None) -> dict[str, GaussianStats]:
    """The diagonal Gaussians ``N(running_mean, diag(running_var))`` stored in the norm layers (the estimate of Alg. 1)."""
    names = _resolve_layers(model, layers)
    modules = dict(model.named_modules())
    out = {}
    for n in names:
        m = modules[n]
        if getattr(m, "running_mean", None) is None:
            raise ValueError(f"layer {n!r} has no running statistics.")
        out[n] = GaussianStats(m.running_mean.detach().double().cpu(), torch.diag(m.running_var.detach().double().cpu()))
    return out


def layerwise_distances(
    target: dict[str, GaussianStats],
    estimate: dict[str, GaussianStats],
    covariance: str = "full",
    eps: float = 1e-6,
) -> list[dict]:
    """Per-layer Eq. (2) and Eq. (5) distances, in the order of ``target``.

    Args:
        target: true target statistics per layer (the normaliser).
        estimate: estimated statistics per layer (same names and channel counts).
        covariance: ``"full"`` (multivariate) or ``"diagonal"`` (independent channels, BatchNorm's view).
        eps: relative ridge added to both covariances (see :func:`normalized_wasserstein2_squared`).

    Returns:
        rows ``{"layer", "index", "channels", "w2", "w2_normalized", "w2_normalized_per_channel",
        "mean_term", "n_target", "n_estimate"}``; ``mean_term`` is the whitened mean-shift part
        of ``w2_normalized``.
    """
    if covariance not in ("full", "diagonal"):
        raise ValueError(f"covariance must be 'full' or 'diagonal', got {covariance!r}.")
    missing = [n for n in target if n not in estimate]
    if missing:
        raise ValueError(f"estimate has no statistics for layers {missing}.")
    rows = []
    for i, (name, t) in enumerate(target.items()):
        e = estimate[name]
        if t.channels != e.channels:
            raise ValueError(f"layer {name!r}: {t.channels} target channels but {e.channels} estimated ones.")
        if covariance == "diagonal":
            t, e = t.diagonal(), e.diagonal()
        d_norm = normalized_wasserstein2_squared(t.mean, t.cov, e.mean, e.cov, eps=eps)
        cov_t, cov_e, delta = _regularize(t.cov, e.cov, eps)
        mu_w, _ = _whiten(t.mean, cov_t, e.mean, cov_e)
        mean_term = float((mu_w**2).sum())
        rows.append(
            {
                "layer": name,
                "index": i,
                "channels": t.channels,
                "w2": wasserstein2_squared(t.mean, t.cov, e.mean, e.cov),
                "w2_normalized": d_norm,
                "w2_normalized_per_channel": d_norm / t.channels,
                "mean_term": mean_term,
                "n_target": t.n,
                "n_estimate": e.n,
            }
        )
    return rows


def aggregate_distance(rows: list[dict], key: str = "w2_normalized_per_channel") -> float:
    """Mean over layers of ``key`` (the aggregated measure)."""
    if not rows:
        raise ValueError("no layers to aggregate.")
    return float(sum(r[key] for r in rows) / len(rows))


def adaptation_distance(
    adapted: nn.Module,
    reference: nn.Module,
    target_data: Iterable | None,
    layers: Sequence[str] | None = None,
    *,
    statistics: str = "features",
    covariance: str = "full",
    where: str = "input",
    image_key: str = "image",
    device: str | torch.device | None = None,
    max_batches: int | None = None,
) -> list[dict]:
    """The paper's measure: adapted model (estimate) versus a target-supervised reference (truth).

    Args:
        adapted: the adapted model (e.g. after :func:`~monai_uda.methods.bn_reestimation.reestimation.reestimate_bn`).
        reference: same architecture (same layer names and channel counts), trained on the target.
        target_data: target image batches, iterated once per model (unused with ``statistics="running"``).
        layers: sub-module names; default all norm layers.
        statistics: ``"features"`` — Gaussians fitted to the layer features of each model on
            ``target_data`` (``where`` selects inputs or outputs; note that with ``"input"`` the first
            norm layer of two models sharing the first conv sees identical features); ``"running"``
            — the diagonal Gaussians of the norm layers' stored statistics (the ``mu_hat, sigma_hat^2``
            of Alg. 1 versus the reference's target statistics; no data needed).
        covariance, where, image_key, device, max_batches: see :func:`feature_statistics` and
            :func:`layerwise_distances`.

    Returns:
        the rows of :func:`layerwise_distances`.
    """
    names = _resolve_layers(adapted, layers)
    if statistics == "running":
        return layerwise_distances(running_statistics(reference, names), running_statistics(adapted, names), covariance)
    if statistics != "features":
        raise ValueError(f"statistics must be 'features' or 'running', got {statistics!r}.")
    if target_data is None:
        raise ValueError("target_data is required with statistics='features'.")
    kw = dict(where=where, image_key=image_key, device=device, max_batches=max_batches)
    truth = feature_statistics(reference, target_data, names, **kw)
    est = feature_statistics(adapted, target_data, names, **kw)
    return layerwise_distances(truth, est, covariance=covariance)


def domain_shift_distance(
    model: nn.Module,
    source_data: Iterable,
    target_data: Iterable,
    layers: Sequence[str] | None = None,
    *,
    covariance: str = "full",
    where: str = "input",
    image_key: str = "image",
    device: str | torch.device | None = None,
    max_batches: int | None = None,
) -> list[dict]:
    """Label-free domain-shift indicator: ``model`` on source images (estimate) versus on target images (truth).

    Normalised by the target statistics, hence asymmetric (A->B differs from B->A). Returns the rows
    of :func:`layerwise_distances`.
    """
    names = _resolve_layers(model, layers)
    truth = feature_statistics(model, target_data, names, where=where, image_key=image_key, device=device, max_batches=max_batches)
    est = feature_statistics(model, source_data, names, where=where, image_key=image_key, device=device, max_batches=max_batches)
    return layerwise_distances(truth, est, covariance=covariance)
