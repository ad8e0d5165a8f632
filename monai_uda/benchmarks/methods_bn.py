"""Benchmark entry of BatchNorm re-estimation (Stenger et al.): method ``bn``, the bundle's ``adapt.json``.

The row records the re-estimation ``mode`` and ``alpha`` the bundle ran with (``bn_mode``, ``bn_alpha``), so a
changed bundle default or a ``--override bn:mode=...`` shows in the table.
"""

from __future__ import annotations

import os
import time

from .methods import MethodContext, MethodOutput, config_values, register_method

__all__ = ["bn_reestimation"]


@register_method("bn", "BatchNorm re-estimation of the source model on target images (exact target statistics)")
def bn_reestimation(ctx: MethodContext) -> MethodOutput:
    from monai_uda.bundle import run_bundle

    source = ctx.source_checkpoint()
    out = os.path.join(ctx.workdir, "bn")
    t = time.time()
    wf = run_bundle("bn_reestimation_segmentation", "adapt.json", datalist=ctx.datalist, seed=ctx.seed,
                    source_checkpoint=source, ckpt_dir=out, output_dir=out, device=f"$torch.device('{ctx.device}')",
                    spatial_dims=ctx.uda.spatial_dims, progress=ctx.progress,
                    **ctx.overrides)
    ran = {f"bn_{k}": v for k, v in config_values(wf, ("mode", "alpha")).items()}
    return MethodOutput(checkpoint=os.path.join(out, "model.pt"), extra={"adapt_seconds": round(time.time() - t, 2), **ran})
