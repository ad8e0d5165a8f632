"""The method registry of ``monai-uda benchmark``: each method issue adds its entry here.

A method is a function ``fn(ctx: MethodContext) -> MethodOutput``. It runs its bundle's configs (one
source of truth for every setting) with the context's budget, seed and the user's overrides
(``ctx.overrides``, from ``monai-uda benchmark --override METHOD:KEY=VALUE``) and returns the checkpoint
that the runner evaluates on the target test set. Methods that adapt a source model call ``ctx.source_checkpoint()`` (trained once per seed
and shared). Methods only ever see ``target_training`` images through ``ctx.uda.split``; target
labels are the runner's business (evaluation) and the oracle's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["NO_VALIDATOR_RECORD", "MethodContext", "MethodOutput", "METHODS", "PLUGINS", "register_method", "get_method", "load_methods",
           "config_values", "cap_rounds"]


@dataclass
class MethodOutput:
    """What a method hands back to the runner.

    Attributes:
        checkpoint: network weights to evaluate.
        bundle: the bundle whose ``train.json`` + ``evaluate.json`` evaluate the checkpoint.
        eval_overrides: extra config overrides for evaluation (e.g. a different ``network_def``).
        extra: numbers to report next to the metrics (e.g. ``adapt_seconds``, ``epochs``).
    """

    checkpoint: str
    bundle: str = "source_segmentation"
    eval_overrides: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


#: overrides every benchmark bundle run gets: no ``model.validators.json`` record (the ``selected`` row and the
#: validator study score every model themselves)
NO_VALIDATOR_RECORD: dict[str, Any] = {"record_validators": []}


@dataclass
class MethodContext:
    """Everything a method needs: the pair, its working folder, the budget, the seed and the device."""

    datalist: str
    workdir: str
    seed: int
    budget: dict[str, Any]
    device: str = "cpu"
    amp: bool = False
    progress: bool = False
    _source: Callable[[], str] | None = None
    #: the user's config overrides for this method's bundle runs (applied last, over the budget)
    overrides: dict[str, Any] = field(default_factory=dict)
    #: every method's overrides of this benchmark run (``--override METHOD:KEY=VALUE``), for a stage that several
    #: methods share and that takes its settings from the methods it belongs to; empty outside a benchmark run
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def uda(self):
        from monai_uda.data import UDAData

        if not hasattr(self, "_uda"):
            self._uda = UDAData(self.datalist, deep=False)
        return self._uda

    def source_checkpoint(self) -> str:
        """The source-only model of this seed (trained on first use, then reused)."""
        if self._source is None:
            raise RuntimeError("this context has no source model")
        return self._source()

    def bundle_overrides(self, subdir: str) -> dict[str, Any]:
        """Overrides that point a bundle config at this pair, budget, seed, device and a working folder."""
        out = os.path.join(self.workdir, subdir)
        ov = {
            "datalist": self.datalist,
            "seed": self.seed,
            "ckpt_dir": out,
            "output_dir": out,
            "device": f"$torch.device('{self.device}')",
            "amp": bool(self.amp),
            "spatial_dims": self.uda.spatial_dims,
            "progress": self.progress,
            **NO_VALIDATOR_RECORD,
        }
        ov.update(self.budget)
        ov.update(self.overrides)
        return ov


METHODS: dict[str, dict[str, Any]] = {}


def register_method(name: str, description: str = "") -> Callable:
    """Decorator adding a method to :data:`METHODS`."""

    def deco(fn: Callable[[MethodContext], MethodOutput]) -> Callable:
        METHODS[name] = {"fn": fn, "description": description or (fn.__doc__ or "").strip().split("\n")[0]}
        return fn

    return deco


#: modules that register methods when imported (one per method family)
PLUGINS = (
    "monai_uda.benchmarks.methods_bn",
    "monai_uda.benchmarks.methods_early",
    "monai_uda.benchmarks.methods_buda",
    "monai_uda.benchmarks.methods_s2d",
    "monai_uda.benchmarks.methods_past",
    "monai_uda.benchmarks.methods_selected",
)


def load_methods() -> dict[str, dict[str, Any]]:
    """Import every method plugin that exists (a missing plugin module is skipped) and return :data:`METHODS`."""
    import importlib
    import warnings

    for mod in PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:  # the plugin exists but one of its imports is missing
                warnings.warn(f"method plugin {mod} could not be imported and is skipped: {e}")
        except Exception as e:  # a broken plugin must not take the other methods down
            warnings.warn(f"method plugin {mod} failed to import and is skipped: {type(e).__name__}: {e}")
    return METHODS


def cap_rounds(ov: dict[str, Any], rounds: int) -> dict[str, Any]:
    """In a cut budget (quick/demo: ``max_epochs`` given), no more pseudo-label rounds than epochs: set
    ``num_rounds`` to ``min(rounds, max_epochs)`` unless it is given. Full mode keeps the bundle's ``num_rounds``."""
    if "max_epochs" in ov and "num_rounds" not in ov:
        ov["num_rounds"] = min(int(rounds), int(ov["max_epochs"] or 1))
    return ov


def config_values(workflow: Any, keys: Any) -> dict[str, Any]:
    """``{key: resolved value}`` of a finished bundle run's config, for a benchmark row (what the row ran with)."""
    return {k: workflow.parser.get_parsed_content(k) for k in keys}


def get_method(name: str) -> Callable[[MethodContext], MethodOutput]:
    load_methods()
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name]["fn"]


def _train(ctx: MethodContext, key: str, subdir: str) -> str:
    from monai_uda.bundle import run_bundle

    ov = ctx.bundle_overrides(subdir)
    configs = ["train.json"] if key == "source_training" else ["train.json", "train_oracle.json"]
    if key != "source_training":
        ov.pop("ckpt_dir")  # train_oracle.json sets it from bundle_root; put it in our folder instead
        ov["ckpt_dir"] = os.path.join(ctx.workdir, subdir)
    ov["train_key"] = key
    run_bundle("source_segmentation", configs, **ov)
    return os.path.join(ov["ckpt_dir"], "model.pt")


def training_record(checkpoint: str) -> dict[str, Any]:
    """How a source/oracle training ended, from the ``validation_history.csv`` beside its checkpoint.

    ``val_dice``: the best validation Dice (the kept checkpoint's), ``best_iteration``: when it was reached,
    ``iterations``: how many training iterations ran (early stopping or the cap). Empty without validation.
    """
    import pandas as pd

    path = os.path.join(os.path.dirname(checkpoint), "validation_history.csv")
    if not os.path.isfile(path):
        return {}
    h = pd.read_csv(path)
    if h.empty or "val_mean_dice" not in h:
        return {}
    best = h.loc[h.val_mean_dice.idxmax()]
    it = "iteration" if "iteration" in h else "epoch"
    return {"val_dice": round(float(best.val_mean_dice), 4), "best_iteration": int(best[it]),
            "iterations": int(h[it].max())}


@register_method("source", "source-only: trained on labelled source data, applied to the target as is")
def source_only(ctx: MethodContext) -> MethodOutput:
    ckpt = ctx.source_checkpoint()
    return MethodOutput(checkpoint=ckpt, extra=training_record(ckpt))


@register_method("oracle", "target-supervised upper bound (uses target labels; benchmarks only)")
def oracle(ctx: MethodContext) -> MethodOutput:
    ckpt = _train(ctx, "oracle_training", "oracle")
    return MethodOutput(checkpoint=ckpt, extra=training_record(ckpt))


def train_source(ctx: MethodContext) -> str:
    """Train the source-only model of a context (used by the runner's shared source cache)."""
    return _train(ctx, "source_training", "source")
