"""Staged bundles resumed after a stage or a round give bit-identical weights to an uninterrupted run (issue 20).

- early_feature_refinement_segmentation: ``adapt.json`` alone (it runs ``train_head.json`` through ensure_stage)
  against ``train_head.json`` then ``adapt.json``;
- shallow2deep_segmentation: ``adapt.json`` alone (forests and enhancer through ensure_stage) against
  ``prepare_forests.json``, ``train_enhancer.json``, ``adapt.json``;
- pixel_alignment_segmentation: the self-training rounds of ``self_train.json`` killed in round 2 and resumed
  (the optimizer's state carries over the rounds) against an uninterrupted run.
"""

from __future__ import annotations

import pytest
import torch

from monai_uda.bundle import resolve_source_checkpoint, run_bundle


def _same_weights(a, b):
    a = torch.load(a, map_location="cpu", weights_only=True)
    b = torch.load(b, map_location="cpu", weights_only=True)
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def _ov(root, datalist, **kw):
    return {"bundle_root": str(root), "datalist": datalist, "ckpt_dir": str(root / "models"),
            "output_dir": str(root / "eval"), **kw}


@pytest.fixture(scope="module")
def source_2d(tmp_path_factory, tiny_demo_2d):
    out = tmp_path_factory.mktemp("staged_source")
    return resolve_source_checkpoint(None, str(out), datalist=tiny_demo_2d, max_epochs=1, epoch_length=1, batch_size=1,
                                     num_samples=1, roi_size=[32, 32], validate_during_training=False)


def test_early_features_adapt_after_head_stage_is_bit_identical(tmp_path, tiny_demo_2d, source_2d, one_thread):
    bundle = "early_feature_refinement_segmentation"
    tiny = {"max_epochs": 2, "epoch_length": 1, "batch_size": 1, "num_samples": 1, "roi_size": [32, 32],
            "head_max_epochs": 1, "head_epoch_length": 1, "source_checkpoint": source_2d,
            "restore_on_divergence": False}
    whole, staged = tmp_path / "whole", tmp_path / "staged"
    run_bundle(bundle, "adapt.json", **_ov(whole, tiny_demo_2d, **tiny))  # trains the head inside
    head = {k: v for k, v in tiny.items() if not k.startswith("head_") and k != "restore_on_divergence"}
    run_bundle(bundle, "train_head.json", **_ov(staged, tiny_demo_2d, **dict(head, max_epochs=1, epoch_length=1)))
    _same_weights(whole / "models" / "head_model.pt", staged / "models" / "head_model.pt")
    run_bundle(bundle, "adapt.json", **_ov(staged, tiny_demo_2d, **tiny))  # reuses the head
    _same_weights(whole / "models" / "model.pt", staged / "models" / "model.pt")


def test_shallow2deep_adapt_after_forest_and_enhancer_stages_is_bit_identical(tmp_path, tiny_demo_2d, one_thread):
    bundle = "shallow2deep_segmentation"
    forests = {"n_forests": 2, "forest_trees": 2, "samples_per_class": 50, "patch_size_range": [24, 48]}
    enhancer = {"max_epochs": 1, "epoch_length": 2, "batch_size": 2, "num_samples": 1, "roi_size": [32, 32]}
    adapt = dict(enhancer, target_forest_trees=2)
    # adapt.json hands its stages only paths, data and seed: the tiny stage budgets travel in its `upstream`
    common = {k: f"@{k}" for k in ("bundle_root", "datalist", "dataset_dir", "ckpt_dir", "output_dir", "spatial_dims",
                                   "seed", "forest_file")}
    upstream = {**common, "enhancer_file": "@enhancer_file", "device": "@device", "amp": "@amp", **enhancer,
                "upstream": {**common, "data_limit": None, **forests}}
    whole, staged = tmp_path / "whole", tmp_path / "staged"
    run_bundle(bundle, "adapt.json", workflow_type=None, **_ov(whole, tiny_demo_2d, **adapt, upstream=upstream))
    run_bundle(bundle, "prepare_forests.json", workflow_type=None, **_ov(staged, tiny_demo_2d, **forests))
    run_bundle(bundle, "train_enhancer.json", workflow_type=None, **_ov(staged, tiny_demo_2d, **enhancer))
    _same_weights(whole / "models" / "enhancer.pt", staged / "models" / "enhancer.pt")
    run_bundle(bundle, "adapt.json", workflow_type=None, **_ov(staged, tiny_demo_2d, **adapt))
    _same_weights(whole / "models" / "model.pt", staged / "models" / "model.pt")


def test_past_self_training_resumed_in_round_2_is_bit_identical(tmp_path, tiny_demo_2d, killed_in_round, one_thread):
    bundle = "pixel_alignment_segmentation"
    tiny = {"max_epochs": 1, "epoch_length": 2, "batch_size": 1, "num_samples": 1, "roi_size": [32, 32],
            "data_limit": 2, "validate_during_training": False, "round_max_epochs": 1, "round_epoch_length": 2}
    run_bundle(bundle, "train_translation.json", **_ov(tmp_path, tiny_demo_2d, data_limit=2, translation_epochs=1,
                                                       translation_epoch_length=1, translation_batch_size=1,
                                                       translation_patch_size=[32, 32]))
    run_bundle(bundle, ["train_translation.json", "translate.json"], **_ov(tmp_path, tiny_demo_2d, data_limit=2))
    run_bundle(bundle, "train.json", **_ov(tmp_path, tiny_demo_2d, **tiny))

    def self_train(name):
        return run_bundle(bundle, ["train.json", "self_train.json"],
                          **_ov(tmp_path, tiny_demo_2d, **tiny, self_train_dir=str(tmp_path / name), progress=False))

    self_train("whole")
    killed_in_round(2)
    with pytest.raises(KeyboardInterrupt):
        self_train("crashed")
    killed_in_round(None)
    wf = self_train("crashed")  # a new run resumes after round 1
    assert [h["round"] for h in wf.parser.get_parsed_content("round_trainer").history] == [2]
    _same_weights(tmp_path / "whole" / "model.pt", tmp_path / "crashed" / "model.pt")
