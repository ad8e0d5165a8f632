"""Benchmark methods of the BUDA-Seg family (Li et al.): ``buda``, ``selftrain`` and ``mcdropout``.

All three run the ``variance_sampling_segmentation`` bundle (the one source of truth of their settings:
``configs/adapt.json`` for ``buda``, layered with ``adapt_selftrain.json`` or ``adapt_mcdropout.json`` for the
baselines, see :data:`monai_uda.methods.buda.rounds.CONFIGS`) from the shared source model of the seed
(``ctx.source_checkpoint()``) with the bundle's budget (``adapt.json``: ``max_epochs`` epochs of
``epoch_length`` iterations in total, spread over ``num_rounds`` rounds; the quick and demo modes cut the
epochs and then use ``T = min(num_rounds, max_epochs)``). They differ only in what
the paper compares:

- ``buda``: variance map + variational sampling Dice loss (Eq. 1-3, K = 4);
- ``selftrain``: the same rounds without the variance map, plain squared Dice (the ablation of Fig. 5);
- ``mcdropout``: Wu et al.'s MC-dropout rectification (4 stochastic passes, dropout 0.1).

The adapted model is a plain ``UDAUNet`` state dict, so the runner evaluates it with the source bundle.
``extra`` holds ``rounds``, ``epochs``, ``adapt_seconds``, the last round's training loss against the
pseudo-labels (``pseudo_dice_loss``; the Dice loss of Fig. 5 for ``buda``/``selftrain``; the rectified
cross-entropy for ``mcdropout``), the foreground fraction of the final pseudo-labels, the number of
collapsed rounds, all read from the summary JSON the bundle writes. The runner adds ``dice_loss`` =
1 - target-test Dice (the "Dice loss" of the paper's Table 1).
"""

from __future__ import annotations

import json
import os
from typing import Any

from monai_uda.benchmarks.methods import MethodContext, MethodOutput, cap_rounds, register_method
from monai_uda.methods.buda.rounds import BUNDLE, CONFIGS

__all__ = ["adapt_with_rounds", "DEFAULT_ROUNDS"]

#: T in the quick/demo modes, capped by their epochs (full mode: ``num_rounds`` of ``adapt.json``)
DEFAULT_ROUNDS = 3


def adapt_with_rounds(ctx: MethodContext, method: str, name: str | None = None, **overrides: Any) -> MethodOutput:
    """Run the bundle configuration of ``method`` from the context's source model with its budget.

    Args:
        ctx: the benchmark context.
        method: ``"buda"``, ``"selftrain"`` or ``"mcdropout"`` (a key of
            :data:`~monai_uda.methods.buda.rounds.CONFIGS`).
        name: the registered method name (working folder ``<workdir>/<name>``; default ``method``).
        overrides: further config overrides (e.g. ``num_rounds=2``, ``round_init="source"``).
    """
    from monai_uda.bundle import run_bundle

    name = name or method
    ov = ctx.bundle_overrides(name)
    ov.pop("validate_during_training", None)  # no validation in these configs
    cap_rounds(ov, DEFAULT_ROUNDS)
    if "num_rounds" in overrides:
        ov["num_rounds"] = int(overrides.pop("num_rounds"))
    ov["source_checkpoint"] = ctx.source_checkpoint()
    ov["rounds_dir"] = os.path.join(ov["ckpt_dir"], "rounds")
    ov["resume"] = False  # a benchmark run starts from this seed's source model, never from stale rounds
    ov.update(overrides)
    wf = run_bundle(BUNDLE, CONFIGS[method], **ov)
    with open(os.path.join(ov["ckpt_dir"], "adapt_summary.json")) as f:
        summary = json.load(f)
    history = summary["train_history"]
    fg = {int(r): v for r, v in summary["foreground_fraction"].items()}
    values = {
        "rounds": int(wf.parser.get_parsed_content("num_rounds")),
        "epochs": int(wf.parser.get_parsed_content("max_epochs")),
        "adapt_seconds": round(summary["adapt_seconds"], 1),
        "pseudo_dice_loss": history[-1]["train_loss"] if history else float("nan"),
        "pseudo_foreground": fg[max(fg)] if fg else float("nan"),
        "collapsed_rounds": len(summary["collapsed_rounds"]),
    }
    return MethodOutput(checkpoint=summary["checkpoint"], extra=values)


@register_method("buda", "BUDA-Seg: pseudo-label rounds with a variance map and the variational sampling Dice loss")
def buda(ctx: MethodContext) -> MethodOutput:
    return adapt_with_rounds(ctx, "buda")


@register_method("selftrain", "self-training rounds without the variance map, plain squared Dice (BUDA-Seg ablation)")
def selftrain(ctx: MethodContext) -> MethodOutput:
    return adapt_with_rounds(ctx, "selftrain")


@register_method("mcdropout", "Wu et al. MC-dropout uncertainty-rectified pseudo-label rounds (4 passes)")
def mcdropout(ctx: MethodContext) -> MethodOutput:
    return adapt_with_rounds(ctx, "mcdropout")
