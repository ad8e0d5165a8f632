"""Benchmark entries of BatchNorm re-estimation (Stenger et al.), the bundle's ``adapt.json``: ``bn`` runs the
bundle's default (Algorithm 1), ``bn_reset`` the exact target statistics (``mode`` reset).

The row records the re-estimation ``mode`` and ``alpha`` the bundle ran with (``bn_mode``, ``bn_alpha``), so a
changed bundle default or a ``--override bn:mode=...`` shows in the table.
"""

from __future__ import annotations

import os
import time

from .methods import MethodContext, MethodOutput, config_values, register_method

__all__ = ["bn_reestimation", "bn_reset"]


@register_method("bn", "BatchNorm re-estimation of the source model on target images (Algorithm 1: momentum "
                       "update from the source statistics, the bundle's default)")
def bn_reestimation(ctx: MethodContext) -> MethodOutput:
    return _bn(ctx, "bn", {})


@register_method("bn_reset", "BatchNorm re-estimation with the exact target statistics (mode reset: the source "
                             "statistics discarded)")
def bn_reset(ctx: MethodContext) -> MethodOutput:
    return _bn(ctx, "bn_reset", {"mode": "reset"})


def _bn(ctx: MethodContext, name: str, settings: dict) -> MethodOutput:
    from monai_uda.bundle import run_bundle

    source = ctx.source_checkpoint()
    out = os.path.join(ctx.workdir, name)
    t = time.time()
    wf = run_bundle("bn_reestimation_segmentation", "adapt.json", datalist=ctx.datalist, seed=ctx.seed,
                    source_checkpoint=source, ckpt_dir=out, output_dir=out, device=f"$torch.device('{ctx.device}')",
                    spatial_dims=ctx.uda.spatial_dims, progress=ctx.progress,
                    **{**settings, **ctx.overrides})
    ran = {f"bn_{k}": v for k, v in config_values(wf, ("mode", "alpha")).items()}
    return MethodOutput(checkpoint=os.path.join(out, "model.pt"), extra={"adapt_seconds": round(time.time() - t, 2), **ran})
