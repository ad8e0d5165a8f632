"""Benchmark methods of the PAST family (Dong et al.): ``past``, and the training-free pixel-alignment baselines
``fda`` and ``histmatch``.

- ``past``: the ``pixel_alignment_segmentation`` bundle end to end: CycleGAN translation source->target
  (``train_translation.json``: ``translation_epochs`` x ``translation_epoch_length`` iterations), translation of the
  source (``translate.json``), segmentation on the translated source (``train.json``: the source recipe, trained to
  convergence) and ``K = 2`` top-q self-training rounds (``self_train.json``, q from 0.6; ``round_max_epochs`` x
  ``round_epoch_length`` iterations each). Quick and demo modes cut every one of these.
- ``fda`` / ``histmatch``: the source bundle's training with every source image aligned to a random target
  training image (FDA low-frequency amplitude swap / histogram matching) in the training transform, the source
  recipe (without precise BN: its statistics would come from the unaligned source images).

All three return plain ``UDAUNet`` state dicts, evaluated by the runner with the source bundle.
"""

from __future__ import annotations

import os
import time

from monai_uda.benchmarks.methods import MethodContext, MethodOutput, register_method

__all__ = ["past", "fda", "histmatch", "PAST_BUNDLE"]

PAST_BUNDLE = "pixel_alignment_segmentation"


def _translation_overrides(ctx: MethodContext, ov: dict) -> dict:
    """The translator's data shape follows the budget's crops; its epochs follow a cut (quick/demo) budget,
    else ``train_translation.json``'s own."""
    b = ctx.budget
    ov = dict(ov)
    if b.get("roi_size"):
        ov["translation_patch_size"] = [max(16, (int(r) // 16) * 16) for r in list(b["roi_size"])[:2]]
    if b.get("batch_size"):
        ov["translation_batch_size"] = int(b["batch_size"])
    if "max_epochs" in b:
        ov["translation_epochs"] = int(b["max_epochs"] or 1)
        ov["translation_epoch_length"] = int(b.get("epoch_length") or 10)
    ov.update(ctx.overrides)
    return ov


@register_method("past", "PAST: CycleGAN pixel alignment + segmentation on translated source + top-q self-training")
def past(ctx: MethodContext) -> MethodOutput:
    from monai_uda.bundle import run_bundle

    ov = ctx.bundle_overrides("past")
    t0 = time.time()
    run_bundle(PAST_BUNDLE, "train_translation.json", **_translation_overrides(ctx, ov))
    translation_seconds = time.time() - t0
    run_bundle(PAST_BUNDLE, ["train_translation.json", "translate.json"], **ov)
    t1 = time.time()
    ov.setdefault("source_checkpoint", ctx.source_checkpoint())  # S starts from this seed's source model
    run_bundle(PAST_BUNDLE, "train.json", **ov)
    rounds = dict(ov)
    if "max_epochs" in ctx.budget:  # a cut budget (quick/demo) cuts the self-training rounds too
        rounds.update(round_max_epochs=ov["max_epochs"], round_epoch_length=ov.get("epoch_length") or 10)
    rounds.update(ctx.overrides)
    wf = run_bundle(PAST_BUNDLE, ["train.json", "self_train.json"], **rounds)
    ckpt = wf.parser.get_parsed_content("adapted_checkpoint")
    return MethodOutput(
        checkpoint=ckpt,
        extra={
            "translation_seconds": round(translation_seconds, 1),
            "segmentation_seconds": round(time.time() - t1, 1),
            "rounds": int(wf.parser.get_parsed_content("num_rounds")),
            "q_start": float(wf.parser.get_parsed_content("q_start")),
        },
    )


def _aligned(ctx: MethodContext, alignment: str) -> MethodOutput:
    from monai_uda.bundle import run_bundle

    ov = ctx.bundle_overrides(alignment)
    ov["imports"] = [
        "$import os", "$import torch", "$import monai_uda", "$import monai_uda.bundle", "$import monai_uda.data",
        "$import monai_uda.transforms", "$import monai_uda.methods.past.past",
    ]
    ov["train#preprocessing"] = (
        f"$monai_uda.methods.past.past.aligned_training_transforms('{alignment}', @uda, roi_size=@roi_size, "
        "num_samples=@num_samples, data_limit=@data_limit)"
    )
    # precise BN would recompute the statistics on the raw source images, not on the aligned ones it trained on
    ov.setdefault("precise_bn", False)
    t0 = time.time()
    run_bundle("source_segmentation", "train.json", **ov)
    return MethodOutput(
        checkpoint=os.path.join(ov["ckpt_dir"], "model.pt"), extra={"adapt_seconds": round(time.time() - t0, 1)}
    )


@register_method("fda", "source training on source images FDA-aligned to random target images (Yang & Soatto 2020)")
def fda(ctx: MethodContext) -> MethodOutput:
    return _aligned(ctx, "fda")


@register_method("histmatch", "source training on source images histogram-matched to random target images")
def histmatch(ctx: MethodContext) -> MethodOutput:
    return _aligned(ctx, "histmatch")
