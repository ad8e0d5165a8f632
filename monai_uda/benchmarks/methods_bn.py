"""Benchmark entries of BatchNorm re-estimation (Stenger et al.), the bundle's ``adapt.json``: ``bn`` runs the
bundle's default (Algorithm 1), ``bn_reset`` the exact target statistics (``mode`` reset), and ``bn_source`` a
control that uses no target image: the exact statistics of the whole *source* training images. The source model's
running statistics come from foreground-enriched training crops; ``bn_source`` shows how much of a re-estimation
gain whole-image statistics alone give (on A1, most of it), so ``bn`` and ``bn_reset`` are read against it.

The row records the re-estimation ``mode`` and ``alpha`` the bundle ran with (``bn_mode``, ``bn_alpha``), so a
changed bundle default or a ``--override bn:mode=...`` shows in the table.
"""

from __future__ import annotations

import os
import time

from .methods import NO_VALIDATOR_RECORD, MethodContext, MethodOutput, config_values, register_method

__all__ = ["bn_reestimation", "bn_reset", "bn_source"]


@register_method("bn", "BatchNorm re-estimation of the source model on target images (Algorithm 1: momentum "
                       "update from the source statistics, the bundle's default)")
def bn_reestimation(ctx: MethodContext) -> MethodOutput:
    return _bn(ctx, "bn", {})


@register_method("bn_reset", "BatchNorm re-estimation with the exact target statistics (mode reset: the source "
                             "statistics discarded)")
def bn_reset(ctx: MethodContext) -> MethodOutput:
    return _bn(ctx, "bn_reset", {"mode": "reset"})


@register_method("bn_source", "control, not an adaptation: BatchNorm statistics re-estimated (mode reset) on the whole "
                              "SOURCE training images; what whole-image statistics alone do, without target images")
def bn_source(ctx: MethodContext) -> MethodOutput:
    return _bn(ctx, "bn_source", {"mode": "reset", "target_dataset#data": "$@uda.split('source_training')"})


def _bn(ctx: MethodContext, name: str, settings: dict) -> MethodOutput:
    from monai_uda.bundle import run_bundle

    source = ctx.source_checkpoint()
    out = os.path.join(ctx.workdir, name)
    t = time.time()
    wf = run_bundle("bn_reestimation_segmentation", "adapt.json", datalist=ctx.datalist, seed=ctx.seed,
                    source_checkpoint=source, ckpt_dir=out, output_dir=out, device=f"$torch.device('{ctx.device}')",
                    spatial_dims=ctx.uda.spatial_dims, progress=ctx.progress,
                    **{**NO_VALIDATOR_RECORD, **settings, **ctx.overrides})
    ran = {f"bn_{k}": v for k, v in config_values(wf, ("mode", "alpha")).items()}
    return MethodOutput(checkpoint=os.path.join(out, "model.pt"), extra={"adapt_seconds": round(time.time() - t, 2), **ran})
