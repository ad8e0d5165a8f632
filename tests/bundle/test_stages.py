"""``ensure_stage``: the one "earlier stage's output, or run that stage" helper of every bundle."""

from __future__ import annotations

import json
import os

import pytest

from monai_uda.bundle import stages
from monai_uda.bundle.stages import ensure_stage, resolve_source_checkpoint


def test_existing_output_is_reused_without_running(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    assert ensure_stage(str(ckpt), "no_such_bundle", "train.json") == str(ckpt)  # nothing run


def test_missing_output_runs_the_stage_and_names_the_bundle(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_bundle"):
        ensure_stage(str(tmp_path / "absent.pt"), "no_such_bundle", "train.json")


def test_rerun_if_changed_follows_the_recorded_settings(tmp_path, monkeypatch):
    calls = []

    def fake_run(bundle, configs, workflow_type=None, **overrides):
        calls.append((bundle, configs, workflow_type, overrides))
        (tmp_path / "model.pt").write_text(json.dumps(overrides))

    monkeypatch.setattr("monai_uda.bundle.run.run_bundle", fake_run)
    path = str(tmp_path / "model.pt")
    ensure_stage(path, "b", ["train.json"], {"seed": 0}, rerun_if_changed=True)
    ensure_stage(path, "b", ["train.json"], {"seed": 0}, rerun_if_changed=True)  # same settings: reused
    assert len(calls) == 1 and calls[0][2] == "train"
    ensure_stage(path, "b", ["train.json"], {"seed": 1}, rerun_if_changed=True)  # other settings: run again
    assert len(calls) == 2 and calls[1][3] == {"seed": 1}
    ensure_stage(path, "b", ["train.json"], {"seed": 2})  # without the check the output is kept
    assert len(calls) == 2


def test_resolve_source_checkpoint(tmp_path, monkeypatch):
    given = tmp_path / "given.pt"
    given.write_bytes(b"x")
    assert resolve_source_checkpoint(str(given), str(tmp_path / "unused")) == str(given)
    with pytest.raises(FileNotFoundError, match="absent.pt"):
        resolve_source_checkpoint(str(tmp_path / "absent.pt"), str(tmp_path))
    seen = {}

    def fake_stage(path, bundle, config, overrides, workflow_type="train", rerun_if_changed=False):
        seen.update(path=path, bundle=bundle, config=config, overrides=overrides, rerun=rerun_if_changed)
        return path

    monkeypatch.setattr(stages, "ensure_stage", fake_stage)
    out = resolve_source_checkpoint(None, str(tmp_path / "src"), datalist="d.json", seed=3)
    assert out == str(tmp_path / "src" / "model.pt") and seen["bundle"] == "source_segmentation"
    assert seen["overrides"] == {"ckpt_dir": str(tmp_path / "src"), "output_dir": str(tmp_path / "src"),
                                 "datalist": "d.json", "seed": 3} and seen["rerun"]


def test_a_source_model_of_another_datalist_is_refused(tmp_path, tiny_demo_2d):
    """The README's trap: the BN bundle fed a source model trained on other data (the demo) for this datalist."""
    import json as _json

    from monai_uda.bundle import run_bundle
    from monai_uda.bundle.stages import CheckpointError, model_card_path
    from monai_uda.data.demo import make_demo_pair

    tiny = {"max_epochs": 1, "epoch_length": 1, "batch_size": 1, "num_samples": 1, "roi_size": [32, 32],
            "validate_during_training": False}
    src = tmp_path / "source"
    run_bundle("source_segmentation", "train.json", datalist=tiny_demo_2d, ckpt_dir=str(src), output_dir=str(src),
               **tiny)
    card = _json.loads(open(model_card_path(str(src / "model.pt"))).read())
    assert card["trained_on"] == "source_training" and card["spatial_dims"] == 2 and card["datalist"] == "demo"
    other = make_demo_pair(tmp_path / "other", spatial_dims=2, slices_per_subject=2,
                           splits={"source_training": 1, "source_validation": 1, "target_training": 1,
                                   "target_test": 1, "oracle_training": 1})
    out = tmp_path / "bn"
    with pytest.raises(CheckpointError, match=r"model\.pt was trained on datalist 'demo', not on the source data of "
                                              r".*its source images differ.*train a source model on this datalist"):
        run_bundle("bn_reestimation_segmentation", "adapt.json", datalist=other, source_checkpoint=str(src / "model.pt"),
                   ckpt_dir=str(out), output_dir=str(out), bundle_root=str(tmp_path))
    assert not (out / "model.pt").exists()
    run_bundle("bn_reestimation_segmentation", "adapt.json", datalist=tiny_demo_2d,  # its own datalist: accepted
               source_checkpoint=str(src / "model.pt"), ckpt_dir=str(out), output_dir=str(out), bundle_root=str(tmp_path))
    assert (out / "model.pt").is_file()


def test_a_new_training_removes_the_old_card_before_it_starts(tmp_path, tiny_demo_2d, monkeypatch):
    """model.pt is rewritten at each best validation; a card left from an earlier run would make an interrupted
    retraining look finished (to --resume, --source-from), so the bundle removes it first."""
    from monai.engines import SupervisedTrainer

    from monai_uda.bundle import run_bundle
    from monai_uda.bundle.stages import model_card_path

    tiny = {"max_epochs": 1, "epoch_length": 1, "batch_size": 1, "num_samples": 1, "roi_size": [32, 32],
            "validate_during_training": False}
    src = tmp_path / "source"
    run_bundle("source_segmentation", "train.json", datalist=tiny_demo_2d, ckpt_dir=str(src), output_dir=str(src),
               **tiny)
    card = model_card_path(str(src / "model.pt"))
    assert os.path.isfile(card)

    def stopped(self, *args, **kwargs):
        raise RuntimeError("stopped during training")

    monkeypatch.setattr(SupervisedTrainer, "run", stopped)
    with pytest.raises(RuntimeError) as stop:
        run_bundle("source_segmentation", "train.json", datalist=tiny_demo_2d, ckpt_dir=str(src),
                   output_dir=str(src), **tiny)
    assert "stopped during training" in repr(stop.value.__cause__ or stop.value)
    assert not os.path.exists(card) and (src / "model.pt").is_file()


def test_checkpoints_without_a_card_are_the_users_own(tmp_path, tiny_demo_2d):
    from monai_uda.bundle.stages import check_source_checkpoint
    from monai_uda.data import UDAData

    weights = tmp_path / "mine.pt"
    weights.write_bytes(b"x")
    assert check_source_checkpoint(str(weights), UDAData(tiny_demo_2d, deep=False)) == str(weights)


def test_a_stage_run_inside_a_run_leaves_the_random_state_as_it_was(tmp_path, monkeypatch):
    """Whether ensure_stage runs the stage or reuses its file, the calling run draws the same numbers next."""
    import random

    import numpy as np
    import torch
    from monai.utils import set_determinism

    from monai_uda.bundle import run as run_module

    def stage(name, configs, workflow_type=None, **ov):  # a stage that seeds and draws, like a bundle run
        set_determinism(seed=123)
        torch.rand(5), np.random.rand(5), random.random()
        (tmp_path / "made.pt").write_bytes(b"x")

    monkeypatch.setattr(run_module, "run_bundle", stage)
    draws = []
    for _ in range(2):  # first the stage runs, then its product is reused
        set_determinism(seed=0)
        ensure_stage(str(tmp_path / "made.pt"), "b", "train.json")
        draws.append((torch.rand(3), np.random.rand(3), random.random()))
    assert torch.equal(draws[0][0], draws[1][0]) and (draws[0][1] == draws[1][1]).all() and draws[0][2] == draws[1][2]
    set_determinism(seed=None)


def test_evaluated_checkpoint_says_it_reuses_the_adapted_model(tmp_path, capsys):
    from monai_uda.bundle import evaluated_checkpoint

    with pytest.raises(FileNotFoundError, match=r"no adapted model at .*model\.pt.*run configs/adapt\.json alone first"):
        evaluated_checkpoint(str(tmp_path / "model.pt"))
    (tmp_path / "model.pt").write_bytes(b"x")
    assert evaluated_checkpoint(str(tmp_path / "model.pt"), resume_key="resume") == str(tmp_path / "model.pt")
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and f"existing adapted model {tmp_path / 'model.pt'}" in out[0]
    assert "does not adapt again" in out[0] and "run configs/adapt.json alone with --resume false" in out[0]
