"""Experiment tracking for bundle steps that have no ignite engine.

``python -m monai.bundle run ... --tracking mlflow`` (MONAI's ``DEFAULT_MLFLOW_SETTINGS``) appends an
``MLFlowHandler`` to ``train#handlers`` when the config has a ``train#trainer`` item, and the handler
logs once it is attached to an ignite engine. Steps such as BatchNorm re-estimation, forest training
or BUDA-Seg's pseudo-label rounds have no engine of their own; their configs therefore declare::

    "train": {"trainer": "@<the step>", "handlers": []}

and end their ``run`` list with ``monai_uda.bundle.log_to_trackers(@train#handlers, params, metrics)``.
Without ``--tracking`` the list stays empty and only TensorBoard scalars are written (when
``tensorboard_dir`` is given); with ``--tracking mlflow`` the same values also go to one MLflow run,
through the patched handler's client, tracking URI, experiment and run name (and the executed config
as an artifact, like MONAI's own handler).

Also here: :func:`set_output_transform` (engines whose output is a plain dict, e.g. the CycleGAN trainer),
:func:`close_trackers` (the evaluate configs' ``finalize``) and small metric helpers for the engine-less
steps (:func:`bn_statistics_shift`, :func:`datalist_counts`, :func:`flatten_summary`).
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from ignite.engine import Engine

__all__ = ["StepEngine", "log_to_trackers", "set_output_transform", "close_trackers", "flatten_summary", "bn_statistics_shift",
           "datalist_counts"]

logger = logging.getLogger(__name__)

Series = Mapping[int, float]  # a metric series: step -> value


class StepEngine(Engine):
    """A one-iteration ignite engine around a step that has no engine of its own (BN re-estimation, the
    self-training rounds, forest training): ``run()`` calls ``step()`` once and keeps its result in
    ``state.output``.

    It is such a config's ``train#trainer``, so ``--tracking mlflow`` finds an engine; the step's values are
    logged by :func:`log_to_trackers` (a loss-logging handler on this engine would have no loss to log).
    """

    def __init__(self, step: Any):
        if not callable(step):
            raise TypeError(f"step must be callable, got {type(step).__name__}.")
        super().__init__(lambda engine, batch: step())

    def run(self, data: Any = None, max_epochs: int | None = None, epoch_length: int | None = None) -> Any:
        """Run the step once (the arguments are ignored: one epoch of one iteration)."""
        return super().run([0], max_epochs=1)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(float(v))


def _metric_items(metrics: Mapping[str, Any]) -> list[tuple[str, float, int]]:
    """``(key, value, step)`` of ``metrics``: a value is a number (step 0) or a ``{step: number}`` mapping."""
    out: list[tuple[str, float, int]] = []
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out += [(str(key), float(v), int(s)) for s, v in value.items() if _is_number(v)]
        elif _is_number(value):
            out.append((str(key), float(value), 0))
    return out


def _mlflow_handlers(handlers: Iterable[Any] | None) -> list[Any]:
    from monai.handlers import MLFlowHandler

    return [h for h in (handlers or []) if isinstance(h, MLFlowHandler)]


def _log_mlflow(handler: Any, params: Mapping[str, Any], items: list[tuple[str, float, int]]) -> str:
    """Log to one MLflow run of ``handler``'s experiment; returns the run id."""
    import mlflow.entities

    client = handler.client
    exp = client.get_experiment_by_name(handler.experiment_name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(
        handler.experiment_name, artifact_location=getattr(handler, "artifact_location", None))
    run = None
    if handler.run_name:  # join an active run of that name, as MLFlowHandler.start does
        active = [r for r in client.search_runs([exp_id]) if r.info.run_name == handler.run_name
                  and r.info.status != handler.run_finish_status]
        run = active[0] if active else None
    if run is None:
        run = client.create_run(exp_id, run_name=handler.run_name or f"run_{time.strftime('%Y%m%d_%H%M%S')}")
    run_id = run.info.run_id
    stamp = int(time.time() * 1000)
    client.log_batch(
        run_id,
        metrics=[mlflow.entities.Metric(k, v, stamp, s) for k, v, s in items],
        params=[mlflow.entities.Param(str(k), str(v)[:6000]) for k, v in params.items()],
        tags=[],
    )
    handler.cur_run = client.get_run(run_id)
    handler.complete()  # logs handler.artifacts (the executed config) to the run
    handler.close()  # marks the run FINISHED and releases the SQLite engine
    return run_id


def set_output_transform(handlers: list[Any] | None, output_transform: Any) -> list[Any]:
    """Give every ``MLFlowHandler`` of ``handlers`` this ``output_transform``; returns ``handlers``.

    MONAI's default tracking settings read the loss with ``from_engine(["loss"], first=True)``, which
    expects a decollated (list) engine output; engines whose ``state.output`` is a plain dict (e.g.
    ``CycleGANTrainer``) use ``"train_handlers": "$... + monai_uda.bundle.tracking.set_output_transform(
    @train#handlers, lambda out: out['loss'])"``.
    """
    for h in _mlflow_handlers(handlers):
        h.output_transform = output_transform
    return list(handlers or [])


def close_trackers(handlers: Iterable[Any] | None) -> int:
    """Finish the MLflow run of every ``MLFlowHandler`` in ``handlers``; returns how many were open.

    MONAI's default settings give the validator's handler no ``close_on_complete`` (during training
    the trainer's handler closes the shared run). A standalone ``evaluate.json`` would then leave its
    run ``RUNNING``, and the next run of the same experiment without a ``run_name`` would log into it;
    the evaluate configs therefore call ``close_trackers(@validate#handlers)`` in ``finalize``.
    """
    opened = 0
    for h in _mlflow_handlers(handlers):
        opened += int(h.cur_run is not None)
        h.close()
    return opened


def log_to_trackers(
    handlers: Iterable[Any] | None,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float | Series] | None = None,
    tensorboard_dir: str | None = None,
    prefix: str = "",
    summary: Mapping[str, Any] | None = None,
) -> list[str]:
    """Log the parameters and result metrics of an engine-less bundle step.

    Args:
        handlers: the config's ``train#handlers``; every ``monai.handlers.MLFlowHandler`` in it (what
            ``--tracking mlflow`` adds) logs one MLflow run; other entries are ignored.
        params: run parameters (values are logged as strings).
        metrics: ``name -> number`` (logged at step 0) or ``name -> {step: number}`` (a series, e.g. one
            value per adaptation round). Non-finite values and non-numbers are skipped.
        tensorboard_dir: also write the metrics as TensorBoard scalars there (None: no TensorBoard).
        prefix: prepended to every metric name (e.g. ``"bn/"``).
        summary: a JSON-like run summary, split by :func:`flatten_summary` and merged into ``params``
            and ``metrics``.

    Returns:
        the ids of the MLflow runs written (empty without ``--tracking mlflow``).
    """
    params, metrics = dict(params or {}), dict(metrics or {})
    if summary:
        summary_params, summary_metrics = flatten_summary(summary)
        params = {**summary_params, **params}
        metrics = {**{k: v for k, v in summary_metrics.items() if k not in params}, **metrics}
    items = [(prefix + k, v, s) for k, v, s in _metric_items(metrics)]
    if tensorboard_dir is not None and items:
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(tensorboard_dir, exist_ok=True)
        with SummaryWriter(log_dir=tensorboard_dir) as writer:
            for k, v, s in items:
                writer.add_scalar(k, v, s)
    run_ids = [_log_mlflow(h, params, items) for h in _mlflow_handlers(handlers)]
    for run_id in run_ids:
        logger.info("logged %d params and %d metric values to MLflow run %s", len(params), len(items), run_id)
    return run_ids


def flatten_summary(summary: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a JSON-like run summary into ``(params, metrics)`` for :func:`log_to_trackers`.

    Numbers become metrics; ``{int-like key: number}`` mappings become series (step = key); a list of
    records (dicts) becomes one series per numeric field, the step being the record's ``"round"`` (or
    ``"epoch"``) field, else its index; nested mappings are flattened with ``/``; everything else
    (strings, booleans, lists) becomes a parameter.
    """
    params: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if _is_number(value):
            metrics[name] = float(value)
        elif isinstance(value, Mapping) and value and all(str(k).lstrip("-").isdigit() for k in value):
            series = {int(k): float(v) for k, v in value.items() if _is_number(v)}
            if series:
                metrics[name] = series
            else:
                params[name] = json.dumps(value, default=str)
        elif isinstance(value, Mapping):
            p, m = flatten_summary(value, prefix=f"{name}/")
            params.update(p)
            metrics.update(m)
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            for i, rec in enumerate(value):
                step = int(rec.get("round", rec.get("epoch", i)))
                for k, v in rec.items():
                    if k not in ("round", "epoch") and _is_number(v):
                        metrics.setdefault(f"{name}/{k}", {})[step] = float(v)
        elif value is not None:
            params[name] = value if isinstance(value, (str, bool, int, float)) else json.dumps(value, default=str)
    return params, metrics


def bn_statistics_shift(network: torch.nn.Module, reference: str | Mapping[str, torch.Tensor]) -> dict[str, float]:
    """How much the BatchNorm running statistics of ``network`` moved from ``reference``.

    Args:
        network: the adapted network.
        reference: the state dict (or a checkpoint path) the statistics started from.

    Returns:
        ``bn_layers`` (norm layers with running statistics), ``bn_layers_changed``, ``bn_mean_abs_shift``
        (mean over layers of ``mean |mu_new - mu_old|``) and ``bn_log_var_ratio`` (mean over layers of
        ``mean |log(var_new / var_old)|``).
    """
    if isinstance(reference, str):
        reference = torch.load(reference, map_location="cpu", weights_only=True)
        if "model" in reference and isinstance(reference["model"], Mapping):
            reference = reference["model"]
    net = network.module if hasattr(network, "module") else network
    layers = changed = 0
    mean_shift: list[float] = []
    var_ratio: list[float] = []
    for name, mod in net.named_modules():
        if not isinstance(mod, torch.nn.modules.batchnorm._NormBase) or mod.running_mean is None:
            continue
        old_m, old_v = reference.get(f"{name}.running_mean"), reference.get(f"{name}.running_var")
        if old_m is None or old_v is None:
            continue
        layers += 1
        new_m, new_v = mod.running_mean.detach().cpu().float(), mod.running_var.detach().cpu().float()
        old_m, old_v = old_m.float(), old_v.float()
        changed += int(not (torch.equal(new_m, old_m) and torch.equal(new_v, old_v)))
        mean_shift.append(float((new_m - old_m).abs().mean()))
        var_ratio.append(float((new_v.clamp_min(1e-12) / old_v.clamp_min(1e-12)).log().abs().mean()))
    return {
        "bn_layers": float(layers),
        "bn_layers_changed": float(changed),
        "bn_mean_abs_shift": sum(mean_shift) / len(mean_shift) if mean_shift else 0.0,
        "bn_log_var_ratio": sum(var_ratio) / len(var_ratio) if var_ratio else 0.0,
    }


def datalist_counts(path: str, keys: Iterable[str] | None = None) -> dict[str, float]:
    """``<key>_items``: the number of items of each list in a datalist JSON file (``keys``: only those)."""
    with open(path) as f:
        data = json.load(f)
    keys = [k for k, v in data.items() if isinstance(v, list)] if keys is None else list(keys)
    return {f"{k}_items": float(len(data.get(k) or [])) for k in keys}
