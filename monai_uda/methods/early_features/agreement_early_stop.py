"""Stopping rule of Sheikh & Schultz (MIDL 2022, Sec. 2.2) as an ignite handler.

"Throughout the refinement, we track the Dice score between the early and final segmentations. We stop
when the absolute difference between the Dice in the current and the previous epoch drops below 0.005."
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer, SimpleInferer

from monai_uda.methods.early_features.refinement import agreement_dice, split_outputs

__all__ = ["AgreementEarlyStop"]

logger = logging.getLogger(__name__)


class AgreementEarlyStop:
    """After each epoch, get the early/final Dice agreement on the target set and stop once it settles.

    The agreement ``d_e`` of epoch ``e`` is either computed by this handler on ``data_loader`` (the
    network in eval mode, no gradient; the mean over images of
    :func:`~monai_uda.methods.early_features.refinement.agreement_dice`, averaged over the early heads) and
    stored in ``engine.state.metrics[metric_name]``, or — without ``data_loader`` — read from
    ``engine.state.metrics[metric_name]`` (e.g. a metric attached to the trainer).

    The engine is terminated after epoch ``e`` when ``|d_e - d_{e-1}| < min_delta`` or when
    ``e == max_epochs``. The first comparison is after epoch 2 (consecutive refinement epochs), or after
    epoch 1 with ``compare_with_initial`` (``d_0`` = agreement before refinement; needs ``data_loader``).

    Recorded in ``engine.state``:

    - ``agreement_history``: ``[d_0?, d_1, d_2, ...]`` (``d_0`` only with ``compare_with_initial``);
    - ``epochs_to_convergence``: the epoch at which training stopped (set at the end of the run in any
      case, so a run that reached its maximum records the number of epochs run);
    - ``agreement_converged``: whether the ``min_delta`` criterion fired;
    - ``agreement_diverged`` / ``restored_epoch``: see ``restore_on_divergence``.

    Divergence guard (``restore_on_divergence``, off by default; the engine factory and the bundle turn it
    on): Eq. 2 trains the early head towards the final prediction, so the agreement should rise. On a
    target where the early head starts weak, refining the shared early layers can instead drag the final
    prediction with it: on the real pairs B2 and D1 the agreement *fell* in the first epochs while the
    segmentation drifted to almost all background (B2) or spread over the image (D1). With the guard, the
    handler keeps a copy of the network's state (parameters and BatchNorm buffers, on the CPU) from the
    epoch of the highest agreement so far (epoch 0 = before refinement with ``compare_with_initial``),
    and when the agreement drops more than ``divergence_delta`` below that best it restores that state,
    warns, and stops. The guard reads no label: it uses only the agreement that the stopping rule
    already computes.

    Args:
        data_loader: target data (unlabelled; labels, if present, are never read).
        metric_name: key in ``engine.state.metrics`` to write (with ``data_loader``) or read.
        min_delta: the paper's 0.005.
        max_epochs: optional cap in addition to the engine's own ``max_epochs``.
        inferer: MONAI inferer for the agreement pass (default ``SimpleInferer``; a sliding-window
            inferer works because the segmentor returns a flat tuple).
        image_key: image key of dict batches.
        include_background: include the background class in the agreement Dice.
        compare_with_initial: also compute ``d_0`` when the run starts.
        network: the model to evaluate; defaults to ``engine.network``.
        distributed: multi-GPU (DDP) refinement: ``data_loader`` is this rank's shard of the target set and
            the agreement is the mean over the images of *all* ranks (per-rank sums and counts are
            all-reduced), so that every rank takes the same stopping decision (otherwise a rank that stops
            early leaves the others waiting in DDP's gradient all-reduce). Every rank must run the handler.
        restore_on_divergence: turn the divergence guard on (see above).
        divergence_delta: how far below the best agreement so far counts as diverging.
    """

    def __init__(
        self,
        data_loader: Iterable | None = None,
        metric_name: str = "agreement",
        min_delta: float = 0.005,
        max_epochs: int | None = None,
        inferer: Inferer | Callable | None = None,
        image_key: str = "image",
        include_background: bool = False,
        compare_with_initial: bool = False,
        network: torch.nn.Module | None = None,
        distributed: bool = False,
        restore_on_divergence: bool = False,
        divergence_delta: float = 0.02,
    ):
        if min_delta < 0:
            raise ValueError(f"`min_delta` must be >= 0, got {min_delta}.")
        if max_epochs is not None and max_epochs < 1:
            raise ValueError(f"`max_epochs` must be >= 1, got {max_epochs}.")
        if divergence_delta < 0:
            raise ValueError(f"`divergence_delta` must be >= 0, got {divergence_delta}.")
        if compare_with_initial and data_loader is None:
            raise ValueError("`compare_with_initial` needs `data_loader` (no metric exists before the first epoch).")
        self.data_loader = data_loader
        self.metric_name = metric_name
        self.min_delta = float(min_delta)
        self.max_epochs = max_epochs
        self.inferer = SimpleInferer() if inferer is None else inferer
        self.image_key = image_key
        self.include_background = include_background
        self.compare_with_initial = compare_with_initial
        self.network = network
        self.distributed = bool(distributed)
        self.restore_on_divergence = bool(restore_on_divergence)
        self.divergence_delta = float(divergence_delta)
        self._best: tuple[float, int, dict] | None = None

    def attach(self, engine: Engine) -> None:
        """Register the handler on ``engine`` (STARTED, EPOCH_COMPLETED, COMPLETED)."""
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _started(self, engine: Engine) -> None:
        engine.state.agreement_history = []
        engine.state.agreement_converged = False
        engine.state.epochs_to_convergence = None
        engine.state.agreement_diverged = False
        engine.state.restored_epoch = None
        self._best = None
        if self.compare_with_initial:
            value = self.compute_agreement(engine)
            engine.state.agreement_history.append(value)
            self._keep_if_best(engine, value, 0)

    def _completed(self, engine: Engine) -> None:
        if engine.state.epochs_to_convergence is None:
            engine.state.epochs_to_convergence = engine.state.epoch

    def _model(self, engine: Engine) -> torch.nn.Module:
        net = self.network if self.network is not None else getattr(engine, "network", None)
        if net is None:
            raise ValueError("AgreementEarlyStop: no `network` given and the engine has no `network`.")
        if isinstance(net, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            net = net.module  # the local replica
        return net

    def _keep_if_best(self, engine: Engine, value: float, epoch: int) -> None:
        """Remember the network's state when ``value`` is the best agreement so far (guard on only)."""
        if not self.restore_on_divergence or (self._best is not None and value <= self._best[0]):
            return
        state = {k: v.detach().to("cpu", copy=True) for k, v in self._model(engine).state_dict().items()}
        self._best = (value, epoch, state)

    def _diverged(self, engine: Engine, value: float) -> bool:
        """Restore the best state and stop when ``value`` fell more than ``divergence_delta`` below the best."""
        if not self.restore_on_divergence or self._best is None or value >= self._best[0] - self.divergence_delta:
            return False
        best_value, best_epoch, state = self._best
        self._model(engine).load_state_dict(state)
        engine.state.agreement_diverged = True
        engine.state.restored_epoch = best_epoch
        engine.state.epochs_to_convergence = engine.state.epoch
        logger.warning(
            "early-feature refinement diverged: the early/final agreement fell from %.4f (epoch %d) to %.4f "
            "(epoch %d); restored the weights of epoch %d and stopped.",
            best_value, best_epoch, value, engine.state.epoch, best_epoch,
        )
        engine.terminate()
        return True

    def _image(self, batch) -> torch.Tensor:
        if isinstance(batch, torch.Tensor):
            return batch
        if isinstance(batch, dict):
            if self.image_key not in batch:
                raise KeyError(f"AgreementEarlyStop: batch has no image key {self.image_key!r}; keys: {list(batch)}.")
            return batch[self.image_key]
        return batch[0]

    def compute_agreement(self, engine: Engine) -> float:
        """Mean early/final Dice agreement over ``data_loader`` (eval mode; training flags restored)."""
        net = self._model(engine)  # the local replica: no DDP buffer broadcast (a collective) per rank
        device = getattr(engine.state, "device", None)
        flags = {m: m.training for m in net.modules()}
        net.eval()
        values = []
        try:
            with torch.no_grad():
                for batch in self.data_loader:
                    x = self._image(batch)
                    if device is not None:
                        x = x.to(device)
                    final, early = split_outputs(self.inferer(x, net))
                    per_head = [agreement_dice(final, e, self.include_background) for e in early]
                    values.append(torch.stack(per_head).mean(0).cpu())
        finally:
            for m, flag in flags.items():
                m.training = flag
        if self.distributed:
            from monai_uda.distributed import all_reduce

            local = torch.cat(values).double() if values else torch.zeros(0, dtype=torch.float64)
            total = all_reduce(torch.stack([local.sum(), torch.tensor(float(local.numel()), dtype=torch.float64)]))
            if total[1] == 0:
                raise ValueError("AgreementEarlyStop: `data_loader` yielded no batches on any rank.")
            return float(total[0] / total[1])
        if not values:
            raise ValueError("AgreementEarlyStop: `data_loader` yielded no batches.")
        return float(torch.cat(values).mean())

    def __call__(self, engine: Engine) -> None:
        if not hasattr(engine.state, "agreement_history"):  # attached without STARTED (e.g. add_event_handler)
            self._started(engine)
        if self.data_loader is not None:
            value = self.compute_agreement(engine)
            engine.state.metrics[self.metric_name] = value
        else:
            if self.metric_name not in engine.state.metrics:
                raise KeyError(
                    f"AgreementEarlyStop: engine.state.metrics has no {self.metric_name!r} "
                    f"(available: {list(engine.state.metrics)}); attach the metric or give `data_loader`."
                )
            value = float(engine.state.metrics[self.metric_name])
        if value != value:
            raise ValueError(
                f"AgreementEarlyStop: the agreement {self.metric_name!r} is NaN at epoch {engine.state.epoch}."
            )
        history = engine.state.agreement_history
        history.append(value)
        epoch = engine.state.epoch
        if self._diverged(engine, value):
            return
        self._keep_if_best(engine, value, epoch)
        if len(history) >= 2 and abs(history[-1] - history[-2]) < self.min_delta:
            engine.state.agreement_converged = True
            engine.state.epochs_to_convergence = epoch
            engine.terminate()
        elif self.max_epochs is not None and epoch >= self.max_epochs:
            engine.state.epochs_to_convergence = epoch
            engine.terminate()
