"""Ignite handler that re-estimates the BatchNorm statistics of ``engine.network`` on target images."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from monai.utils import IgniteInfo, min_version, optional_import

from monai_uda.methods.bn_reestimation.reestimation import reestimate_bn

if TYPE_CHECKING:
    from ignite.engine import Engine, Events
    from ignite.engine.events import CallableEventWithFilter
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")
    Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
    CallableEventWithFilter, _ = optional_import(
        "ignite.engine.events", IgniteInfo.OPT_IMPORT_VERSION, min_version, "CallableEventWithFilter"
    )

__all__ = ["BNReestimation"]


class BNReestimation:
    """Re-estimate BatchNorm statistics on unlabelled target images (Stenger et al., Algorithm 1).

    Wraps :func:`monai_uda.methods.bn_reestimation.reestimation.reestimate_bn`. Typical use: attach it to an
    evaluator (fires at ``Events.STARTED``) so that the network is adapted to the target domain
    right before it is evaluated, or call it directly (``handler(engine)`` or ``handler()`` with
    ``network`` given). Only the running statistics change; every learned weight stays frozen.

    Bundle config example (``adapt.json``)::

        "handlers": [{"_target_": "monai_uda.methods.bn_reestimation.reestimation_handler.BNReestimation",
                      "data": "@target_loader", "mode": "reset", "event": "STARTED"}]

    Args:
        data: target batches: a ``DataLoader`` (or any iterable of tensors/dicts/tuples), or a
            ``torch.utils.data.Dataset``, which is then wrapped in ``monai.data.DataLoader`` with
            ``batch_size`` and ``num_workers``.
        network: the network to adapt; default ``engine.network``.
        alpha: weight of a new batch statistic in ``"ema"`` mode (PyTorch ``momentum`` convention).
        mode: ``"ema"`` (Algorithm 1) or ``"reset"`` (exact population statistics).
        passes: passes over ``data``.
        layers: ``"all"``, the first ``N`` norm layers (int), or a list of layer names.
        unbiased: store Bessel-corrected variances (PyTorch ``running_var`` convention).
        image_key: image key of dict batches.
        event: ignite event name (``"STARTED"``, ``"EPOCH_STARTED"``, ...) or an ``Events`` member.
        once: run only at the first firing of ``event`` (later firings are ignored).
        batch_size: batch size when ``data`` is a dataset.
        num_workers: loader workers when ``data`` is a dataset.
        progress: tqdm progress bar.
        distributed: pool the statistics over all ranks of the ``torch.distributed`` process group
            (``reestimate_bn(distributed=True)``; every rank must call the handler). A dataset ``data`` is
            then cut into the same unshuffled batches as in a single process and rank ``r`` takes batches
            ``r, r + W, ...``, so that in ``"reset"`` mode the result equals the single-process one
            exactly; a loader or iterable ``data`` must already be this rank's shard. See
            :mod:`monai_uda.methods.bn_reestimation.reestimation` for the ``"ema"`` semantics.
    """

    def __init__(
        self,
        data: Iterable | torch.utils.data.Dataset,
        network: torch.nn.Module | None = None,
        alpha: float = 0.1,
        mode: str = "ema",
        passes: int = 1,
        layers: str | int | Sequence[str] = "all",
        unbiased: bool = True,
        image_key: str = "image",
        event: str | Any = "STARTED",
        once: bool = True,
        batch_size: int = 4,
        num_workers: int = 0,
        progress: bool = True,
        distributed: bool = False,
    ) -> None:
        if mode not in ("ema", "reset"):
            raise ValueError(f"mode must be 'ema' or 'reset', got {mode!r}.")
        self.dataset = None
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
            from monai.data import DataLoader

            if distributed:  # sharded when called: the rank is known once the process group exists
                self.dataset = data
            else:
                data = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        self.data = data
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.network = network
        self.distributed = bool(distributed)
        self.kwargs = dict(
            alpha=alpha, mode=mode, passes=passes, layers=layers, unbiased=unbiased, image_key=image_key,
            progress=progress, distributed=self.distributed,
        )
        self.event = self._resolve_event(event)
        self.once = once
        self.calls = 0
        self.logger = logging.getLogger(__name__)

    @staticmethod
    def _resolve_event(event: str | Any) -> Any:
        if isinstance(event, str):
            name = event.upper()
            if not hasattr(Events, name):
                raise ValueError(f"event={event!r} is not an ignite Events name (e.g. 'STARTED', 'EPOCH_STARTED').")
            return getattr(Events, name)
        return event

    def rank_loader(self) -> Iterable:
        """This rank's share of the single-process batches of the dataset: batches ``rank, rank + W, ...``."""
        from monai.data import DataLoader

        from monai_uda.distributed import get_rank, get_world_size

        if self.dataset is None:
            return self.data
        n = len(self.dataset)  # type: ignore[arg-type]
        batches = [list(range(i, min(i + self.batch_size, n))) for i in range(0, n, self.batch_size)]
        own = batches[get_rank() :: get_world_size()]
        return DataLoader(self.dataset, batch_sampler=own, num_workers=self.num_workers)

    def attach(self, engine: Engine) -> None:
        """Register this handler on ``engine`` at ``event``."""
        if not engine.has_event_handler(self, self.event):
            engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine | None = None) -> torch.nn.Module:
        """Adapt ``self.network`` (or ``engine.network``) and return it."""
        if self.once and self.calls > 0:
            return self.network if self.network is not None else engine.network  # type: ignore[union-attr]
        network = self.network if self.network is not None else getattr(engine, "network", None)
        if network is None:
            raise ValueError("BNReestimation needs a network: pass network= or use an engine with .network.")
        device = getattr(getattr(engine, "state", None), "device", None)  # MONAI workflows keep it in engine.state
        data = self.data if self.dataset is None else self.rank_loader()
        reestimate_bn(network, data, device=device, **self.kwargs)
        self.calls += 1
        self.logger.info(f"BNReestimation: re-estimated the norm statistics ({self.kwargs['mode']}, call {self.calls}).")
        return network
