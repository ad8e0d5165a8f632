"""Benchmark methods of the BUDA-Seg family (paper 000): ``buda``, ``selftrain`` and ``mcdropout``.

All three start from the shared source model of the seed (``ctx.source_checkpoint()``) and run the same
pseudo-label rounds (:class:`~monai_uda.adaptation.buda_rounds.PseudoLabelAdaptation`) with the same
budget as the source model: ``max_epochs`` epochs of ``epoch_length`` iterations in total, spread over
``T = min(3, max_epochs)`` rounds. They differ only in what the paper compares:

- ``buda``: variance map + variational sampling Dice loss (Eq. 1-3, K = 4);
- ``selftrain``: the same rounds without the variance map, plain squared Dice (the ablation of Fig. 5);
- ``mcdropout``: Wu et al.'s MC-dropout rectification (4 stochastic passes, dropout 0.1).

The adapted model is a plain ``UDAUNet`` state dict, so the runner evaluates it with the source bundle.
``extra`` holds ``rounds``, ``epochs``, ``adapt_seconds``, the last round's training loss against the
pseudo-labels (``pseudo_dice_loss``; the Dice loss of Fig. 5 for ``buda``/``selftrain``; the rectified
cross-entropy for ``mcdropout``), the foreground fraction of the final pseudo-labels, the number of
collapsed rounds. The runner adds ``dice_loss`` = 1 - target-test Dice (the "Dice loss" of the paper's Table 1).
"""

from __future__ import annotations

import os
from typing import Any

from monai.utils import set_determinism

from monai_uda.adaptation.buda_rounds import PseudoLabelAdaptation
from monai_uda.benchmarks.methods import MethodContext, MethodOutput, register_method

__all__ = ["adapt_with_rounds", "DEFAULT_ROUNDS"]

#: T, the number of pseudo-label rounds (capped by the budget's epochs)
DEFAULT_ROUNDS = 3


def adapt_with_rounds(ctx: MethodContext, method: str, name: str | None = None, **kwargs: Any) -> MethodOutput:
    """Run :class:`PseudoLabelAdaptation` (``method``) from the context's source model with its budget.

    Args:
        ctx: the benchmark context.
        method: ``"buda"``, ``"selftrain"`` or ``"mcdropout"``.
        name: the registered method name (working folder ``<workdir>/<name>``; default ``method``).
        kwargs: further :class:`PseudoLabelAdaptation` arguments.
    """
    name = name or method
    source = ctx.source_checkpoint()
    budget = ctx.budget
    max_epochs = int(budget.get("max_epochs", 1))
    rounds = int(kwargs.pop("num_rounds", min(DEFAULT_ROUNDS, max_epochs)))
    workdir = os.path.join(ctx.workdir, name)
    set_determinism(seed=ctx.seed)
    adaptation = PseudoLabelAdaptation(
        ctx.datalist,
        source,
        output_dir=os.path.join(workdir, "rounds"),
        ckpt_dir=workdir,
        method=method,
        num_rounds=rounds,
        max_epochs=max_epochs,
        epoch_length=budget.get("epoch_length"),
        batch_size=budget.get("batch_size", 4),
        num_samples=budget.get("num_samples", 2),
        roi_size=budget.get("roi_size"),
        data_limit=budget.get("data_limit"),
        device=ctx.device,
        amp=ctx.amp,
        resume=False,  # a benchmark run starts from this seed's source model, never from stale rounds
        progress=False,
        **kwargs,
    )
    checkpoint = adaptation.run()
    summary = adaptation.summary
    history = summary["train_history"]
    fg = summary["foreground_fraction"]
    values = {
        "rounds": rounds,
        "epochs": max_epochs,
        "adapt_seconds": round(summary["adapt_seconds"], 1),
        "pseudo_dice_loss": history[-1]["train_loss"] if history else float("nan"),
        "pseudo_foreground": fg[max(fg)] if fg else float("nan"),
        "collapsed_rounds": len(summary["collapsed_rounds"]),
    }
    return MethodOutput(checkpoint=checkpoint, extra=values)


@register_method("buda", "BUDA-Seg: pseudo-label rounds with a variance map and the variational sampling Dice loss")
def buda(ctx: MethodContext) -> MethodOutput:
    return adapt_with_rounds(ctx, "buda")


@register_method("selftrain", "self-training rounds without the variance map, plain squared Dice (BUDA-Seg ablation)")
def selftrain(ctx: MethodContext) -> MethodOutput:
    return adapt_with_rounds(ctx, "selftrain")


@register_method("mcdropout", "Wu et al. MC-dropout uncertainty-rectified pseudo-label rounds (4 passes)")
def mcdropout(ctx: MethodContext) -> MethodOutput:
    return adapt_with_rounds(ctx, "mcdropout")
