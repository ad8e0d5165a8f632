"""Shallow-to-deep (Matskevych et al.) in ``monai-uda benchmark``: ``rf``, ``enhancer``, ``s2d`` and the Table 7 ablations.

Per seed, the steps shared by all five methods run once in ``<workdir>/s2d_common`` with the benchmark's
budget (``bundles/shallow2deep_segmentation``): source forests (``prepare_forests.json``), the Prediction
Enhancer (``train_enhancer.json``, its ``max_epochs x epoch_length`` iterations) and the
target forest from brushstrokes (``adapt.json`` up to the forest). Benchmarks have no user, so the strokes
are **simulated** from ``oracle_training`` labels (the documented simulator; a stand-in for a user's eyes,
never seen by any network). The scribble budget is reported in every row (``scribble_pixels``,
``scribble_images``).

- ``rf``: the scribble forest alone; ``enhancer``: forest + Prediction Enhancer. Neither is a ``UDAUNet``:
  they are evaluated through the source bundle's ``evaluate.json`` with ``network_def`` overridden by
  :class:`~monai_uda.methods.shallow2deep.workflow.ForestEnhancerNet` (raw image -> features -> forest ->
  enhancer -> two-channel log-probabilities) and a whole-image ``SimpleInferer`` (features need the
  whole image), so no runner change is needed.
- Overrides: the shared stage is built with those given to ``rf`` and ``enhancer`` (``--override enhancer:max_epochs=800``),
  whichever row asks for it first; a pseudo-label net's (``--override s2d:max_epochs=24``) reach only its own net, though
  ``train_enhancer.json`` has keys of the same names.
- ``s2d``: the pseudo-label network (consistency + rectification); ``s2d_noteacher``: without the
  mean-teacher consistency term; ``s2d_norect``: without label rectification (Table 7). Plain ``UDAUNet``
  checkpoints.

Forest sizes: full mode uses the bundle's (``prepare_forests.json``: 500 source forests of 10 trees, the paper's count;
``adapt.json``: a 10-tree target forest, as many trees as each source forest, so that the enhancer sees the kind of
map it learned on); the cut budgets of the quick and demo modes scale the source forests' count with
``iterations = max_epochs * epoch_length`` (8 source forests in quick mode).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time


from monai_uda.benchmarks.methods import MethodContext, MethodOutput, register_method
from monai_uda.utils import atomic_json, atomic_torch_save

__all__ = ["shallow2deep_common", "s2d_sizes", "enhancer_epochs", "net_epochs", "rf", "enhancer", "s2d", "s2d_noteacher", "s2d_norect"]

BUNDLE = "shallow2deep_segmentation"
#: the enhancer's epochs in the rows and ``s2d_common`` folders made before they recorded them
UNRECORDED_ENHANCER_EPOCHS = 24
#: the methods whose rows are the shared stage's own output: their overrides build it (:func:`_stage_context`)
STAGE_OWNERS = ("rf", "enhancer")
_UNET = {"_target_": "monai_uda.networks.UDAUNet", "in_channels": 1, "out_channels": 2}


def s2d_sizes(budget: dict) -> dict:
    """Forest counts/sizes for a budget (see module docstring)."""
    iters = int(budget.get("max_epochs") or 1) * int(budget.get("epoch_length") or 1)
    return {
        "n_forests": int(min(100, max(8, iters // 4))),
        "forest_trees": 10,
        "target_forest_trees": 10,  # as many as each source forest: the enhancer's input (adapt.json)
    }


def _overrides(ctx: MethodContext, subdir: str) -> dict:
    # a cut budget (quick/demo: validate_during_training false) trains the enhancer for its fixed epochs, as it
    # does the source model; full mode leaves the key out, so the enhancer validates (train_enhancer.json)
    ov = ctx.bundle_overrides(subdir)
    d = os.path.join(ctx.workdir, "s2d_common")
    ov.update(
        forest_file=os.path.join(d, "source_forests.joblib"),
        enhancer_file=os.path.join(d, "enhancer.pt"),
        target_forest_file=os.path.join(d, "target_forest.joblib"),
        n_jobs=1,
        # a cut budget (quick/demo) gets fewer, smaller forests; full mode keeps the bundle's own
        **(s2d_sizes(ctx.budget) if "max_epochs" in ctx.budget else {}),
    )
    ov.update(ctx.overrides)  # the user's overrides win over the budget-derived sizes
    return ov


def _setting(config: str, ov: dict, key: str):
    """``key`` of ``config`` run with the bundle overrides ``ov``: theirs, else the config's own."""
    if key in ov:
        return ov[key]
    from monai_uda.bundle.locate import bundle_dir

    with open(bundle_dir(BUNDLE) / "configs" / config) as fh:
        return json.load(fh)[key]


def _enhancer_setting(ov: dict, key: str):
    """``key`` of the enhancer's training with the bundle overrides ``ov``: theirs, else ``train_enhancer.json``'s."""
    return _setting("train_enhancer.json", ov, key)


def net_epochs(ov: dict) -> int:
    """The epochs the pseudo-label net (``s2d`` and its ablations) trains with the bundle overrides ``ov``
    (``adapt.json``'s ``max_epochs``, else theirs)."""
    return int(_setting("adapt.json", ov, "max_epochs"))


def enhancer_epochs(ov: dict) -> int:
    """The epochs (with validation: the cap) the enhancer trains with the bundle overrides ``ov``."""
    return int(_enhancer_setting(ov, "max_epochs"))


def enhancer_validated(ov: dict) -> bool:
    """Whether the enhancer keeps its best epoch on source_validation (``validate_during_training``)."""
    return bool(_enhancer_setting(ov, "validate_during_training"))


def _stage_context(ctx: MethodContext) -> MethodContext:
    """``ctx`` with the overrides the shared stage is built with: those given to its own rows, ``rf`` and ``enhancer``
    (the enhancer's win), never a pseudo-label net's: ``--override s2d:max_epochs=24`` is the net's budget, and the
    enhancer of ``train_enhancer.json`` reads the same key. A context made outside a benchmark run (no
    ``method_overrides``) keeps its own."""
    if not ctx.method_overrides:
        return ctx
    ov: dict = {}
    for name in STAGE_OWNERS:
        ov.update(ctx.method_overrides.get(name, {}))
    return dataclasses.replace(ctx, overrides=ov)


def shallow2deep_common(ctx: MethodContext) -> dict:
    """Source forests, enhancer and target forest of this seed (built once, then reused while the enhancer's budget
    stays the same: a folder built at another ``max_epochs`` is built again); returns the facts. The stage takes the
    overrides of ``rf`` and ``enhancer`` (:func:`_stage_context`), whichever method asks for it."""
    from monai_uda.bundle import run_bundle

    ctx = _stage_context(ctx)
    d = os.path.join(ctx.workdir, "s2d_common")
    facts_file = os.path.join(d, "facts.json")
    ov = _overrides(ctx, "s2d_common")
    if os.path.isfile(facts_file):
        with open(facts_file) as fh:
            facts = json.load(fh)
        if (facts.get("enhancer_epochs", UNRECORDED_ENHANCER_EPOCHS) == enhancer_epochs(ov)
                and facts.get("enhancer_validated", False) == enhancer_validated(ov)):
            return facts
    facts: dict = {}
    t = time.time()
    wf = run_bundle(BUNDLE, "prepare_forests.json", workflow_type=None, overwrite_forests=True, **ov)
    facts["source_forests"] = int(wf.parser.get_parsed_content("n_forests"))
    facts["source_forests_s"] = round(time.time() - t, 2)
    t = time.time()
    wf = run_bundle(BUNDLE, "train_enhancer.json", workflow_type=None, **ov)
    facts["enhancer_train_s"] = round(time.time() - t, 2)
    facts["enhancer_epochs"] = int(wf.parser.get_parsed_content("max_epochs"))  # the row's enhancer budget (cap)
    facts["enhancer_validated"] = bool(wf.parser.get_parsed_content("validate_during_training"))
    facts["enhancer_trained_epochs"] = int(wf.parser.get_parsed_content("train#trainer").state.epoch)
    if facts["enhancer_validated"]:  # the epoch whose weights became the enhancer: the best source_validation Dice
        import pandas as pd

        hist = pd.read_csv(wf.parser.get_parsed_content("history_file"))
        best = hist.loc[hist.val_mean_dice.idxmax()]
        facts["enhancer_best_epoch"] = int(best.epoch)
        facts["enhancer_val_dice"] = round(float(best.val_mean_dice), 4)
    wf = run_bundle(
        BUNDLE, "adapt.json", workflow_type=None,
        initialize=["$monai.utils.set_determinism(seed=@seed)"],
        run=["$@target_forest"],
        **ov,
    )
    info = wf.parser.get_parsed_content("scribble_data")[1]
    facts["target_forest_trees"] = int(wf.parser.get_parsed_content("target_forest_trees"))
    facts.update({
        "scribble_simulated": bool(info["simulated"]),
        "scribble_images": info["scribble_images"],
        "scribble_pixels": info["scribble_pixels"],
        "scribble_fg_pixels": info["scribble_fg_pixels"],
        "target_forest_features_s": info.get("target_forest_features_s"),
        "target_forest_fit_s": info.get("target_forest_fit_s"),
    })
    facts.update(forest_file=ov["forest_file"], enhancer_file=ov["enhancer_file"],
                 target_forest_file=ov["target_forest_file"])
    atomic_json(facts, facts_file)
    return facts


def _extra(facts: dict, **more) -> dict:
    keep = ("scribble_simulated", "scribble_images", "scribble_pixels", "scribble_fg_pixels", "source_forests",
            "source_forests_s", "enhancer_epochs", "enhancer_validated", "enhancer_trained_epochs",
            "enhancer_best_epoch", "enhancer_val_dice", "enhancer_train_s", "target_forest_features_s",
            "target_forest_fit_s")
    return {**{k: facts[k] for k in keep if k in facts}, **more}


def _forest_output(ctx: MethodContext, use_enhancer: bool) -> MethodOutput:
    from monai_uda.methods.shallow2deep.workflow import ForestEnhancerNet
    from monai_uda.networks.unet import UDAUNet

    facts = shallow2deep_common(ctx)
    net_def = {"_target_": "monai_uda.methods.shallow2deep.workflow.ForestEnhancerNet",
               "forest_path": facts["target_forest_file"]}
    enh = None
    if use_enhancer:
        net_def["enhancer"] = dict(_UNET, spatial_dims=ctx.uda.spatial_dims)
        enh = UDAUNet(spatial_dims=ctx.uda.spatial_dims, in_channels=1, out_channels=2)
    net = ForestEnhancerNet(facts["target_forest_file"], enh, facts["enhancer_file"] if use_enhancer else None)
    name = "enhancer" if use_enhancer else "rf"
    ckpt = os.path.join(ctx.workdir, f"s2d_{name}", "model.pt")
    atomic_torch_save(net.state_dict(), ckpt)
    return MethodOutput(
        checkpoint=ckpt,
        eval_overrides={"network_def": net_def, "validate#inferer": {"_target_": "SimpleInferer"}},
        extra=_extra(facts),
    )


def _pseudo_label_net(ctx: MethodContext, consistency: bool, rectification: bool, subdir: str) -> MethodOutput:
    from monai_uda.bundle import run_bundle

    facts = shallow2deep_common(ctx)
    ov = _overrides(ctx, subdir)
    t = time.time()
    wf = run_bundle(BUNDLE, "adapt.json", workflow_type=None,
                    **{"overwrite_target_forest": False, "consistency": consistency, "rectification": rectification, **ov})
    seconds = time.time() - t
    epochs = wf.parser.get_parsed_content("train#trainer").state.epoch
    return MethodOutput(checkpoint=os.path.join(ov["ckpt_dir"], "model.pt"),
                        extra=_extra(facts, adapt_seconds=round(seconds, 1), epochs=epochs))


@register_method("rf", "shallow2deep: Random Forest trained on target brushstrokes (simulated user), alone")
def rf(ctx: MethodContext) -> MethodOutput:
    return _forest_output(ctx, use_enhancer=False)


@register_method("enhancer", "shallow2deep: target scribble forest + source-trained Prediction Enhancer")
def enhancer(ctx: MethodContext) -> MethodOutput:
    return _forest_output(ctx, use_enhancer=True)


@register_method("s2d", "shallow2deep: pseudo-label UNet from enhancer predictions (consistency + rectification)")
def s2d(ctx: MethodContext) -> MethodOutput:
    return _pseudo_label_net(ctx, True, True, "s2d")


@register_method("s2d_noteacher", "shallow2deep ablation: pseudo-label UNet without the mean-teacher consistency")
def s2d_noteacher(ctx: MethodContext) -> MethodOutput:
    return _pseudo_label_net(ctx, False, True, "s2d_noteacher")


@register_method("s2d_norect", "shallow2deep ablation: pseudo-label UNet without label rectification")
def s2d_norect(ctx: MethodContext) -> MethodOutput:
    return _pseudo_label_net(ctx, True, False, "s2d_norect")
