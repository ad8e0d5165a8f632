"""Benchmark methods of the early-feature self-training family (issue 4, paper 001).

- ``early``: Sheikh & Schultz (MIDL 2022). Stage 2 trains the early segmentation head on source labels
  with the base frozen (``train_head.json``, the budget's epochs); stage 3 refines the early layers on
  ``target_training`` with Eq. 2 and stops by the agreement rule (``adapt.json``; the budget's
  ``max_epochs`` is the cap; the divergence guard restores the epoch of the best agreement when the
  agreement falls). Extra numbers: ``epochs`` (epochs to convergence), ``converged``, ``diverged``,
  ``restored_epoch`` (0 = the weights before refinement were kept), ``head_seconds``, ``adapt_seconds``.
- ``st`` / ``cbst``: Zou et al. (ECCV 2018) self-training and class-balanced self-training, the
  paper's baselines. :class:`~monai_uda.handlers.pseudo_label_rounds.PseudoLabelRounds` labels the
  target with the current model, keeps the confident pixels with
  :class:`~monai_uda.adaptation.self_training.SelfTrainingSelector` (portion 0.2, +0.05 per round; the
  rest is 255 = ignored) and fine-tunes the *whole* source model on them with a MONAI
  ``SupervisedTrainer`` (cross-entropy over the selected pixels, Adam ``ST_LEARNING_RATE``). The
  budget's ``max_epochs`` are split over ``ST_ROUNDS`` rounds, so the total fine-tuning is the same
  budget as the source model's training. Extra numbers: ``rounds``, ``adapt_seconds``, the last
  round's ``foreground_fraction``.

Every method starts from ``ctx.source_checkpoint()`` and only reads ``target_training`` images.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .methods import MethodContext, MethodOutput, register_method

__all__ = ["BUNDLE", "ST_ROUNDS", "ST_LEARNING_RATE", "early_features", "self_training", "cbst", "epochs_per_round"]

#: the bundle of this family
BUNDLE = "early_feature_refinement_segmentation"
#: pseudo-label rounds of ST/CBST (capped at the budget's epochs)
ST_ROUNDS = 3
#: fine-tuning learning rate of ST/CBST (a tenth of the source training's 1e-3: fine-tuning, not training)
ST_LEARNING_RATE = 1e-4


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


def epochs_per_round(max_epochs: int, rounds: int) -> list[int]:
    """Split ``max_epochs`` over ``rounds`` rounds as evenly as possible (earlier rounds get the remainder)."""
    if rounds < 1 or max_epochs < rounds:
        raise ValueError(f"cannot split {max_epochs} epochs over {rounds} rounds.")
    base, rem = divmod(int(max_epochs), int(rounds))
    return [base + (1 if r < rem else 0) for r in range(rounds)]


def _pseudo_label_method(ctx: MethodContext, mode: str) -> MethodOutput:
    import torch
    from monai.data import CacheDataset, DataLoader
    from monai.engines import SupervisedTrainer
    from monai.inferers import SlidingWindowInferer
    from monai.utils import set_determinism

    from monai_uda.adaptation.self_training import IGNORE_VALUE, PseudoLabelCrossEntropyLoss, SelfTrainingSelector
    from monai_uda.handlers.pseudo_label_rounds import PseudoLabelRounds
    from monai_uda.networks.unet import UDAUNet
    from monai_uda.transforms.pipelines import segmentation_transforms

    budget: dict[str, Any] = ctx.budget
    uda = ctx.uda
    device = torch.device(ctx.device)
    set_determinism(seed=ctx.seed)
    source = ctx.source_checkpoint()
    model = UDAUNet(spatial_dims=uda.spatial_dims, in_channels=uda.in_channels, out_channels=uda.num_classes)
    model.load_state_dict(torch.load(source, map_location="cpu", weights_only=True))
    model.to(device)

    max_epochs = int(budget["max_epochs"])
    rounds = min(ST_ROUNDS, max_epochs)
    schedule = epochs_per_round(max_epochs, rounds)
    roi_size = list(budget["roi_size"])
    items = uda.split("target_training", limit=budget.get("data_limit"))  # images only
    infer_tf = segmentation_transforms("target", uda)
    window = SlidingWindowInferer(roi_size, sw_batch_size=4, overlap=0.25)

    def predict_fn(net, target_items):
        net.eval()
        for item in target_items:
            x = infer_tf(dict(item))["image"].unsqueeze(0).to(device)
            yield item, torch.softmax(window(x, net), dim=1)[0].cpu()

    # pseudo-labels are class indices already: no label mapping/binarising; random (not label-guided) crops
    train_tf = segmentation_transforms(
        "train", uda, roi_size=roi_size, num_samples=int(budget["num_samples"]), pos_fraction=0.0,
        label_map={}, binarize=False,
    )

    def train_fn(net, pseudo_datalist, r):
        ds = CacheDataset(pseudo_datalist, transform=train_tf, progress=False)
        loader = DataLoader(ds, batch_size=int(budget["batch_size"]), shuffle=True, num_workers=0)
        trainer = SupervisedTrainer(
            device=device,
            max_epochs=schedule[r - 1],
            train_data_loader=loader,
            network=net,
            optimizer=torch.optim.Adam(net.parameters(), lr=ST_LEARNING_RATE),
            loss_function=PseudoLabelCrossEntropyLoss(IGNORE_VALUE),
            epoch_length=budget.get("epoch_length"),
            amp=bool(ctx.amp),
        )
        trainer.run()
        return net

    out_dir = os.path.join(ctx.workdir, mode)
    driver = PseudoLabelRounds(
        num_rounds=rounds,
        output_dir=out_dir,
        predict_fn=predict_fn,
        select_fn=SelfTrainingSelector(mode=mode, ignore_value=IGNORE_VALUE),
        train_fn=train_fn,
    )
    t0 = time.time()
    driver.run(model, items)
    seconds = time.time() - t0
    state = driver.load_state()
    return MethodOutput(
        checkpoint=os.path.join(out_dir, state["rounds"][str(rounds)]["checkpoint"]),
        extra={
            "rounds": rounds,
            "adapt_seconds": round(seconds, 1),
            "foreground_fraction": round(float(state["rounds"][str(rounds)]["foreground_fraction"]), 4),
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
