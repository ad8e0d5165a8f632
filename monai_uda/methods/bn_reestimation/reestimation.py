"""BatchNorm re-estimation for unsupervised domain adaptation (Stenger et al., Algorithm 1; AdaBN).

All learned weights of a source-trained network are frozen; only the running statistics
(``running_mean`` / ``running_var``) of its normalisation layers are recomputed on *unlabelled*
target images, in one forward pass without back-propagation.

Two update rules are available:

- ``mode="ema"`` — Algorithm 1 of the paper, line by line: start from the source statistics
  (lines 1-2) and, for every target batch ``i = 1..B``, compute the batch moments of the layer input
  ``z_t^i`` (lines 4-5) and update

  .. math::
      \\hat\\mu_t^i = (1-\\alpha)\\,\\hat\\mu_t^{i-1} + \\alpha\\,\\mu_t^i, \\qquad
      (\\hat\\sigma_t^i)^2 = (1-\\alpha)\\,(\\hat\\sigma_t^{i-1})^2 + \\alpha\\,(\\sigma_t^i)^2

  (lines 6-7). ``passes > 1`` simply continues the recursion over the data again.
- ``mode="reset"`` — the source statistics are discarded and replaced by the *exact* population
  mean and variance of the layer input over all target samples (every batch and every spatial
  position, i.e. the cumulative average with the correct between-batch term, not the mean of batch
  variances). Moments are merged across batches in float64 with Chan et al.'s parallel update.

Conventions (stated explicitly because they differ between libraries):

- ``alpha`` is the weight of the *new batch* statistic. It is the same number as PyTorch's
  ``BatchNorm.momentum`` (``running = (1 - momentum) * running + momentum * batch``) and the
  complement of the Keras/TensorFlow ``momentum`` (Keras ``momentum=0.99`` is ``alpha=0.01``).
- Variances: with ``unbiased=True`` (default) every variance that is stored — batch variances
  in ``"ema"`` mode and the population variance in ``"reset"`` mode — uses Bessel's correction
  (divide by ``n - 1``, ``n`` = number of values per channel), which is the convention of PyTorch's
  ``running_var``. ``unbiased=False`` stores the maximum-likelihood variance (divide by ``n``), as
  in Eq. (3)-(4) of the paper. For feature maps ``n`` is huge and the two agree to ~1/n.
- During the pass, adapted layers normalise with the statistics of the current batch (PyTorch's
  training-mode behaviour, as in AdaBN), non-adapted layers with their stored statistics, and
  dropout is off. The statistics of a layer are therefore the moments of its inputs *as seen in
  that pass*; for the first normalisation layer (and for every layer when the whole target set is
  one batch) they are exactly the moments the adapted network sees at inference. (Training-mode
  BatchNorm normalises with the *biased* batch variance, so for deeper layers this holds exactly
  with ``unbiased=False`` and to a relative ~1/n with the default ``unbiased=True``.)
- ``InstanceNorm`` layers with ``track_running_stats=True`` use their running buffers exactly like
  BatchNorm at inference, so they receive the same pooled (batch x space) moments.

Distributed (``distributed=True``, one process per GPU under ``torchrun``; every rank passes its own
shard of the target batches, shards may differ in size and may be empty on some ranks):

- ``"reset"``: the statistics are pooled over *all* ranks exactly. Each rank merges its batches into
  per-channel ``(count, mean, M2)`` (float64); then the counts and per-channel sums are all-reduced
  (global mean), and the per-channel sums of squared deviations about that global mean
  (``M2_r + n_r (mean_r - mean)^2``) are all-reduced too: the result is the population mean and
  (Bessel-corrected with ``unbiased=True``, with the *global* count) variance of the union of the shards,
  i.e. the single-process result on the same batches, up to float64 rounding. Ranks do not merely average
  their means or variances.
- ``"ema"``: Algorithm 1 is a sequential recursion, which has no exact parallel form. Every rank runs it
  on its own shard, starting from the same source statistics, and the final running mean and variance
  are the plain average over the ranks that saw at least one batch. As the update is linear, this equals
  Algorithm 1 driven by the rank-averaged batch statistics of each step when all ranks see the same
  number of batches (e.g. a ``DistributedSampler`` with ``even_divisible=True``); it is *not* the
  single-process sequence over the concatenated data (whose older batches decay more).
- In both modes ``num_batches_tracked`` grows by the total number of batches over all ranks, every rank
  ends with identical buffers, and an error on one rank (NaN input, ...) is raised on every rank instead
  of leaving the others waiting in a collective.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

__all__ = ["reestimate_bn", "list_norm_layers", "is_running_stats_norm", "batch_to_tensor"]


def is_running_stats_norm(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm/InstanceNorm layer (1D/2D/3D, sync or lazy) that keeps running statistics."""
    return (
        isinstance(module, (_BatchNorm, _InstanceNorm))
        and bool(getattr(module, "track_running_stats", False))
        and getattr(module, "running_mean", None) is not None
        and getattr(module, "running_var", None) is not None
    )


def batch_to_tensor(batch: Any, image_key: str = "image") -> torch.Tensor:
    """The image tensor of one batch: a tensor, a dict (``batch[image_key]``) or a list/tuple (first item)."""
    if isinstance(batch, torch.Tensor):
        x = batch
    elif isinstance(batch, Mapping):
        if image_key not in batch:
            raise KeyError(f"batch has no key image_key={image_key!r}; keys: {list(batch)}.")
        x = batch[image_key]
    elif isinstance(batch, (list, tuple)) and len(batch) > 0:
        first = batch[0]
        if isinstance(first, Mapping):  # a list of decollated dicts
            return torch.stack([batch_to_tensor(b, image_key) for b in batch])
        x = first
    else:
        raise TypeError(f"cannot read images from a batch of type {type(batch).__name__}; expected tensor, dict or tuple.")
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if hasattr(x, "as_tensor"):  # MONAI MetaTensor -> plain tensor (no meta tracking overhead)
        x = x.as_tensor()
    return x


def list_norm_layers(network: nn.Module, example_input: torch.Tensor | None = None) -> list[tuple[str, nn.Module]]:
    """The normalisation layers with running statistics of ``network``, in forward order.

    Args:
        network: any module.
        example_input: if given, the order is the order in which the layers are *called* in one
            no-grad eval-mode forward pass of this input (layers that are not called come last, in
            registration order); otherwise the registration order of ``named_modules()`` (equal to
            the forward order for sequential networks and MONAI's ``BasicUNet``).

    Returns:
        ``[(name, module), ...]``; empty if there is none.
    """
    layers = [(n, m) for n, m in network.named_modules() if is_running_stats_norm(m)]
    if example_input is None or not layers:
        return layers
    order: list[str] = []
    handles = []
    for name, m in layers:
        handles.append(m.register_forward_pre_hook(lambda mod, inp, _n=name: order.append(_n) if _n not in order else None))
    was_training = network.training
    try:
        network.eval()
        with torch.no_grad():
            network(example_input)
    finally:
        for h in handles:
            h.remove()
        network.train(was_training)
    rank = {n: i for i, n in enumerate(order)}
    return sorted(layers, key=lambda nm: rank.get(nm[0], len(order)))


class _Moments:
    """Per-channel count / mean / sum of squared deviations (M2), merged across batches in float64."""

    def __init__(self, channels: int):
        self.n = 0
        self.mean = torch.zeros(channels, dtype=torch.float64)
        self.m2 = torch.zeros(channels, dtype=torch.float64)

    def merge(self, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        # Chan, Golub & LeVeque parallel update: exact moments of the union of the two sets.
        if self.n == 0:
            self.n, self.mean, self.m2 = n_b, mean_b.clone(), m2_b.clone()
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta * delta * (self.n * n_b / n)
        self.n = n


def _batch_moments(x: torch.Tensor, name: str) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``(n, mean, M2)`` per channel (dim 1) of one batch, returned in float64 on the CPU."""
    if x.dim() < 2:
        raise ValueError(f"norm layer {name!r} got an input of shape {tuple(x.shape)}; expected (batch, channels, ...).")
    xf = x.detach()
    if xf.dtype not in (torch.float32, torch.float64):
        xf = xf.float()
    dims = [0] + list(range(2, xf.dim()))
    n = xf.numel() // xf.shape[1]
    var, mean = torch.var_mean(xf, dim=dims, correction=0)
    return n, mean.double().cpu(), (var.double() * n).cpu()


def _select_layers(all_layers: list[tuple[str, nn.Module]], layers: str | int | Sequence[str]) -> set[str] | int:
    names = [n for n, _ in all_layers]
    if isinstance(layers, str):
        if layers != "all":
            raise ValueError(f"layers must be 'all', a positive int or a list of layer names, got {layers!r}.")
        return set(names)
    if isinstance(layers, bool):
        raise ValueError(f"layers must be 'all', a positive int or a list of layer names, got {layers!r}.")
    if isinstance(layers, int):
        if layers < 1:
            raise ValueError(f"layers={layers}: the number of norm layers to adapt must be >= 1.")
        if layers > len(names):
            raise ValueError(f"layers={layers} but the network has only {len(names)} norm layers with running stats.")
        return layers
    wanted = list(layers)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ValueError(f"layers: {unknown} are not norm layers with running stats; available: {names}.")
    return set(wanted)


def _pool_across_ranks(
    all_layers: list[tuple[str, nn.Module]],
    chosen: set[str],
    moments: dict[str, _Moments],
    ema: dict[str, list[torch.Tensor]],
    batches_seen: dict[str, int],
    mode: str,
) -> dict[str, float]:
    """Combine the per-rank state of :func:`reestimate_bn` over all ranks, in place (see the module docstring).

    ``chosen`` becomes the union over ranks (a rank with an empty shard has not seen the call order),
    ``batches_seen`` the totals, ``moments`` the exact pooled moments (``"reset"``) and ``ema`` the sums
    over the ranks that saw the layer (``"ema"``); returns, per layer, the number of those ranks.
    """
    from monai_uda.distributed import all_reduce

    names = [n for n, _ in all_layers]
    flags = torch.tensor([float(n in chosen) for n in names] + [float(batches_seen[n]) for n in names],
                         dtype=torch.float64)
    flags_max = all_reduce(flags[: len(names)], op="max")
    seen = all_reduce(flags[len(names):])
    chosen.update(n for n, f in zip(names, flags_max.tolist()) if f > 0)
    local_seen = {n: batches_seen[n] for n in names}
    for n, v in zip(names, seen.tolist()):
        batches_seen[n] = int(v)
    if mode == "reset":
        # pass 1: global counts and per-channel sums -> global means
        counts = torch.tensor([float(moments[n].n) for n in names], dtype=torch.float64)
        sums = [moments[n].mean * moments[n].n for n in names]
        packed = all_reduce(torch.cat([counts] + sums))
        total_n, offset, means = packed[: len(names)], len(names), {}
        for i, n in enumerate(names):
            c = moments[n].mean.numel()
            zero = torch.zeros(c, dtype=torch.float64)
            means[n] = packed[offset : offset + c] / total_n[i] if total_n[i] > 0 else zero
            offset += c
        # pass 2: per-channel sums of squared deviations about the global mean (no cancellation)
        m2 = [moments[n].m2 + moments[n].n * (moments[n].mean - means[n]) ** 2 for n in names]
        m2_total = all_reduce(torch.cat(m2))
        offset = 0
        for i, n in enumerate(names):
            c = moments[n].mean.numel()
            moments[n].n, moments[n].mean, moments[n].m2 = int(total_n[i]), means[n], m2_total[offset : offset + c]
            offset += c
        return {n: 1.0 for n in names}
    # "ema": average of the final per-rank recursions over the ranks that saw the layer
    has = torch.tensor([float(local_seen[n] > 0) for n in names], dtype=torch.float64)
    parts = [torch.cat([ema[n][0], ema[n][1]]) * has[i] for i, n in enumerate(names)]
    packed = all_reduce(torch.cat([has] + parts))
    ranks, offset, weight = packed[: len(names)], len(names), {}
    for i, n in enumerate(names):
        c = ema[n][0].numel()
        if ranks[i] > 0:
            ema[n][0], ema[n][1] = packed[offset : offset + c], packed[offset + c : offset + 2 * c]
        weight[n] = float(ranks[i]) if ranks[i] > 0 else 1.0
        offset += 2 * c
    return weight


def reestimate_bn(
    network: nn.Module,
    data: Iterable,
    *,
    alpha: float = 0.1,
    mode: str = "ema",
    passes: int = 1,
    layers: str | int | Sequence[str] = "all",
    unbiased: bool = True,
    image_key: str = "image",
    device: str | torch.device | None = None,
    progress: bool = True,
    distributed: bool = False,
) -> nn.Module:
    """Re-estimate the normalisation statistics of ``network`` on unlabelled target data (Algorithm 1).

    Every learned parameter is frozen (``requires_grad=False``, and it stays so) and never written:
    the pass runs under ``torch.no_grad()`` and only ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` of the adapted layers change. The cost is one forward pass per batch
    and pass. See the module docstring for the conventions of ``alpha`` and of the variance.

    Args:
        network: a source-trained network with ``BatchNorm{1,2,3}d`` or ``InstanceNorm{1,2,3}d``
            (``track_running_stats=True``) layers, 2D or 3D. Modified in place and returned.
        data: an iterable of batches (re-iterated once per pass): tensors ``(B, C, *spatial)``,
            dicts holding ``image_key`` (MONAI ``DataLoader`` batches) or tuples (image first).
            Target images only; labels are never read.
        alpha: ``"ema"`` mode only, weight of the new batch statistics in (0, 1]
            (``hat = (1 - alpha) * hat + alpha * batch``; equals PyTorch's ``momentum``).
        mode: ``"ema"`` (Algorithm 1, starting from the source statistics) or ``"reset"`` (exact
            population mean/variance of the layer inputs over all target samples; the source
            statistics are discarded; every pass sees the same data so ``passes`` does not change it).
        passes: number of passes over ``data``.
        layers: ``"all"``; an int ``N`` to adapt only the first ``N`` norm layers in forward order
            (the "refine L1-BN" variant; the others keep their source statistics); or a list of
            layer names as in ``named_modules()``.
        unbiased: store Bessel-corrected variances (PyTorch's ``running_var`` convention) if True,
            maximum-likelihood ones if False.
        image_key: key of the image in dict batches.
        device: where to run; defaults to the device of the network's first parameter/buffer.
        progress: show a tqdm progress bar.
        distributed: pool the statistics over all ranks of the default ``torch.distributed`` process
            group (see the module docstring for the exact semantics of each mode). ``data`` must then be
            this rank's shard, and every rank must call this function (it runs collectives). Without a
            process group this is the single-process computation.

    Returns:
        ``network``, in eval mode, with re-estimated statistics.

    Raises:
        ValueError: no norm layer with running statistics, bad ``alpha``/``mode``/``passes``/``layers``,
            empty ``data``, NaN/Inf in a layer input, or a batch with a single value per channel.
    """
    if mode not in ("ema", "reset"):
        raise ValueError(f"mode must be 'ema' or 'reset', got {mode!r}.")
    if not (0.0 < float(alpha) <= 1.0):
        raise ValueError(f"alpha must be in (0, 1], got {alpha}.")
    if int(passes) < 1:
        raise ValueError(f"passes must be >= 1, got {passes}.")
    if distributed:  # without a process group the collectives below are no-ops (one rank)
        from monai_uda.distributed import all_reduce
    all_layers = [(n, m) for n, m in network.named_modules() if is_running_stats_norm(m)]
    if not all_layers:
        raise ValueError(
            f"{type(network).__name__} has no BatchNorm/InstanceNorm layer with running statistics "
            "(track_running_stats=True); BatchNorm re-estimation needs one (e.g. UDAUNet(norm='batch'))."
        )
    selection = _select_layers(all_layers, layers)

    if device is None:
        ref = next(iter(network.parameters()), None)
        ref = ref if ref is not None else next(iter(network.buffers()), None)
        device = ref.device if ref is not None else torch.device("cpu")
    device = torch.device(device)
    network.to(device)
    for p in network.parameters():
        p.requires_grad_(False)

    # per-layer state, float64 on CPU
    source = {n: (m.running_mean.detach().double().cpu().clone(), m.running_var.detach().double().cpu().clone()) for n, m in all_layers}
    ema: dict[str, list[torch.Tensor]] = {n: [source[n][0].clone(), source[n][1].clone()] for n, _ in all_layers}
    moments = {n: _Moments(m.num_features) for n, m in all_layers}
    batches_seen = {n: 0 for n, _ in all_layers}
    call_order: list[str] = []
    first_n = selection if isinstance(selection, int) else None
    chosen: set[str] = set() if first_n is not None else set(selection)  # type: ignore[arg-type]
    original_momentum = {n: m.momentum for n, m in all_layers}
    original_tracked = {
        n: (m.num_batches_tracked.clone() if getattr(m, "num_batches_tracked", None) is not None else None)
        for n, m in all_layers
    }

    def update(name: str, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor) -> None:
        if not (torch.isfinite(mean_b).all() and torch.isfinite(m2_b).all()):
            raise ValueError(f"non-finite (NaN/Inf) values in the input of norm layer {name!r}; check the target images.")
        batches_seen[name] += 1
        if mode == "reset":
            moments[name].merge(n_b, mean_b, m2_b)
        else:  # Algorithm 1, lines 4-7
            var_b = m2_b / (n_b - 1 if unbiased else n_b)
            ema[name][0] = (1.0 - alpha) * ema[name][0] + alpha * mean_b
            ema[name][1] = (1.0 - alpha) * ema[name][1] + alpha * var_b

    def make_pre_hook(name: str):
        def pre_hook(module: nn.Module, inputs: tuple) -> None:
            if name not in call_order:
                call_order.append(name)
                if first_n is not None and len(call_order) <= first_n:
                    chosen.add(name)
            adapt = name in chosen
            module.train(adapt)  # adapted layers normalise with batch statistics, the others with stored ones
            if not adapt:
                return
            x = inputs[0]
            if x.dim() < 2 or x.numel() // max(x.shape[1], 1) < 2:
                raise ValueError(
                    f"norm layer {name!r} sees a single value per channel in a batch (input shape {tuple(x.shape)}); "
                    "use a batch size >= 2 for non-spatial (BatchNorm1d) layers."
                )
            if isinstance(module, _InstanceNorm):  # its own running update averages per-instance variances
                update(name, *_batch_moments(x, name))

        return pre_hook

    def make_post_hook(name: str):
        def post_hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            if name not in chosen or isinstance(module, _InstanceNorm):
                return
            # with momentum=1 PyTorch's training-mode kernel has just written the batch mean and the
            # Bessel-corrected batch variance into the buffers: no second pass over the features.
            x = inputs[0]
            n_b = x.numel() // x.shape[1]
            mean_b = module.running_mean.detach().double().cpu()
            m2_b = module.running_var.detach().double().cpu() * (n_b - 1)
            update(name, n_b, mean_b, m2_b)

        return post_hook

    handles = [m.register_forward_pre_hook(make_pre_hook(n)) for n, m in all_layers]
    handles += [m.register_forward_hook(make_post_hook(n)) for n, m in all_layers]
    n_batches = 0
    total_batches = 0
    ok = False
    try:
        network.eval()  # dropout off; norm layers are switched per call by the hooks
        for _, m in all_layers:
            m.momentum = 1.0  # buffers <- batch statistics; the final values are written at the end
        total = None
        try:
            total = len(data) * int(passes)  # type: ignore[arg-type]
        except TypeError:
            pass
        from tqdm import tqdm

        error: Exception | None = None
        try:
            with torch.no_grad(), tqdm(total=total, desc=f"BN re-estimation ({mode})", disable=not progress) as bar:
                for _ in range(int(passes)):
                    for batch in data:
                        x = batch_to_tensor(batch, image_key).to(device)
                        network(x)
                        n_batches += 1
                        bar.update(1)
        except Exception as e:
            if not distributed:
                raise
            error = e  # first tell the other ranks, so that none of them waits forever in a collective
        total_batches = n_batches
        if distributed:
            status = all_reduce(torch.tensor([float(error is not None), float(n_batches)], dtype=torch.float64))
            total_batches = int(status[1])
            if error is not None:
                raise error
            if status[0] > 0:
                raise RuntimeError("BatchNorm re-estimation failed on another rank (see its error).")
        ok = total_batches > 0
    finally:
        for h in handles:
            h.remove()
        for n, m in all_layers:
            m.momentum = original_momentum[n]
            if not ok:  # failure or no data: put the source statistics back
                m.running_mean.copy_(source[n][0].to(m.running_mean))
                m.running_var.copy_(source[n][1].to(m.running_var))
                if original_tracked[n] is not None:
                    m.num_batches_tracked.copy_(original_tracked[n])
        network.eval()  # returned in eval mode: train mode would overwrite the new statistics

    if total_batches == 0:
        raise ValueError("data is empty: BatchNorm re-estimation needs at least one target batch.")

    if distributed:
        ema_weight = _pool_across_ranks(all_layers, chosen, moments, ema, batches_seen, mode)
    for name, m in all_layers:
        mean_s, var_s = source[name]
        if name in chosen and batches_seen[name] > 0:
            if mode == "reset":
                mom = moments[name]
                mean_s, var_s = mom.mean, mom.m2 / (mom.n - 1 if unbiased else mom.n)
            else:
                mean_s, var_s = ema[name]
                if distributed:
                    mean_s, var_s = mean_s / ema_weight[name], var_s / ema_weight[name]
        elif name in chosen:
            warnings.warn(f"norm layer {name!r} was never called in the forward pass; its statistics are unchanged.")
        # write the buffers (the source values again for non-adapted layers)
        m.running_mean.copy_(mean_s.to(m.running_mean))
        m.running_var.copy_(var_s.to(m.running_var))
        if original_tracked[name] is not None:
            m.num_batches_tracked.copy_(original_tracked[name] + (batches_seen[name] if name in chosen else 0))
    return network
