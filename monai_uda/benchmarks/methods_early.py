"""Benchmark methods of the early-feature self-training family (Sheikh and Schultz).

- ``early``: Sheikh & Schultz (MIDL 2022). Stage 2 trains the early segmentation head on source labels
  with the base frozen (``train_head.json``, the budget's epochs); stage 3 refines the early layers on
  ``target_training`` with Eq. 2 and stops by the agreement rule (``adapt.json``; the budget's
  ``max_epochs`` is the cap; the divergence guard restores the epoch of the best agreement when the
  agreement falls). Extra numbers: ``epochs`` (epochs to convergence), ``converged``, ``diverged``,
  ``restored_epoch`` (0 = the weights before refinement were kept), ``head_seconds``, ``adapt_seconds``.
- ``st`` / ``cbst``: Zou et al. (ECCV 2018) self-training and class-balanced self-training, the
  paper's baselines, run through the same bundle (``adapt.json`` + ``adapt_st.json`` [+ ``adapt_cbst.json``],
  configurations of the self-training engine :class:`~monai_uda.engines.self_training.SelfTraining`): each
  round labels the target with the current model, keeps the confident pixels with
  :class:`~monai_uda.engines.pseudo_labellers.SelfTrainingSelector` (portion 0.2, +0.05 per round; the
  rest is 255 = ignored) and fine-tunes the *whole* source model on them with a MONAI
  ``SupervisedTrainer`` (cross-entropy over the selected pixels, Adam at ``adapt_st.json``'s
  ``learning_rate``). ``max_epochs`` of ``adapt.json`` are split over ``adapt_st.json``'s ``num_rounds``. Extra numbers (from the summary JSON the bundle writes):
  ``rounds``, ``adapt_seconds``, the last round's ``foreground_fraction``.

Every method starts from ``ctx.source_checkpoint()`` and only reads ``target_training`` images.
"""

from __future__ import annotations

import json
import os
import time

from .methods import MethodContext, MethodOutput, cap_rounds, register_method

__all__ = ["BUNDLE", "ST_ROUNDS", "ST_CONFIGS", "early_features", "self_training", "cbst"]

#: the bundle of this family
BUNDLE = "early_feature_refinement_segmentation"
#: pseudo-label rounds of ST/CBST in the quick/demo modes, capped by their epochs (full mode: ``adapt_st.json``)
ST_ROUNDS = 3


@register_method(
    "early", "self-training of early features (Sheikh & Schultz 2022): early head + early-layer refinement"
)
def early_features(ctx: MethodContext) -> MethodOutput:
    """Head training (stage 2) then early-layer refinement with the agreement stopping rule (stage 3)."""
    from monai_uda.bundle import run_bundle

    source = ctx.source_checkpoint()
    ov = ctx.bundle_overrides("early")
    ov.pop("validate_during_training", None)  # no validation in these configs
    ov["source_checkpoint"] = source
    ckpt_dir = ov["ckpt_dir"]
    t0 = time.time()
    run_bundle(BUNDLE, "train_head.json", **ov)
    t1 = time.time()
    run_bundle(BUNDLE, "adapt.json", head_checkpoint=os.path.join(ckpt_dir, "head_model.pt"), **ov)
    t2 = time.time()
    with open(os.path.join(ckpt_dir, "refinement_summary.json")) as f:
        summary = json.load(f)
    return MethodOutput(
        checkpoint=os.path.join(ckpt_dir, "model.pt"),
        extra={
            "epochs": summary["epochs_to_convergence"],
            "converged": summary["agreement_converged"],
            "diverged": summary.get("agreement_diverged", False),
            "restored_epoch": summary.get("restored_epoch"),
            "head_seconds": round(t1 - t0, 1),
            "adapt_seconds": round(t2 - t1, 1),
        },
    )


#: the layered configs (in the bundle's ``configs/``) of ST and CBST
ST_CONFIGS = {"st": ["adapt.json", "adapt_st.json"], "cbst": ["adapt.json", "adapt_st.json", "adapt_cbst.json"]}


def _pseudo_label_method(ctx: MethodContext, mode: str) -> MethodOutput:
    """ST / CBST through the bundle (``adapt_st.json`` / ``adapt_cbst.json``) with the budget of the context."""
    from monai_uda.bundle import run_bundle

    ov = ctx.bundle_overrides(mode)
    ov.pop("validate_during_training", None)  # no validation in these configs
    cap_rounds(ov, ST_ROUNDS)
    ov.update(
        source_checkpoint=ctx.source_checkpoint(),
        self_train_dir=ov["ckpt_dir"],  # rounds, model.pt and the summary directly in <workdir>/<mode>
        resume=False,  # a benchmark run starts from this seed's source model, never from stale rounds
    )
    wf = run_bundle(BUNDLE, ST_CONFIGS[mode], **ov)
    rounds = int(wf.parser.get_parsed_content("num_rounds"))
    with open(os.path.join(ov["ckpt_dir"], "adapt_summary.json")) as f:
        summary = json.load(f)
    return MethodOutput(
        checkpoint=summary["checkpoint"],
        extra={
            "rounds": rounds,
            "adapt_seconds": round(summary["adapt_seconds"], 1),
            "foreground_fraction": round(float(summary["foreground_fraction"][str(rounds)]), 4),
        },
    )


@register_method("st", "self-training with confidence-filtered hard pseudo-labels (Zou et al. 2018), whole network")
def self_training(ctx: MethodContext) -> MethodOutput:
    """ST: one global confidence threshold per round (the kept portion grows by round)."""
    return _pseudo_label_method(ctx, "st")


@register_method("cbst", "class-balanced self-training (Zou et al. 2018), whole network")
def cbst(ctx: MethodContext) -> MethodOutput:
    """CBST: class-wise confidence thresholds per round."""
    return _pseudo_label_method(ctx, "cbst")
