"""Bundle test: the real configs of ``bn_reestimation_segmentation`` on a tiny demo pair."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from monai_uda.bundle import run_bundle
from monai_uda.networks import UDAUNet

BUNDLE = "bn_reestimation_segmentation"


def _source(tmp_path, datalist, dims=2):
    roi = [32, 32] if dims == 2 else [32, 32, 32]
    run_bundle("source_segmentation", "train.json", datalist=datalist, bundle_root=str(tmp_path),
               ckpt_dir=str(tmp_path / "src"), output_dir=str(tmp_path / "src"), max_epochs=1, epoch_length=2,
               batch_size=1, num_samples=1, roi_size=roi, validate_during_training=False, spatial_dims=dims)
    return str(tmp_path / "src" / "model.pt")


def test_adapt_changes_only_bn_statistics_and_evaluates(tmp_path, tiny_demo_2d, capsys):
    src = _source(tmp_path, tiny_demo_2d)
    ov = {"datalist": tiny_demo_2d, "bundle_root": str(tmp_path), "source_checkpoint": src,
          "ckpt_dir": str(tmp_path / "bn"), "output_dir": str(tmp_path / "eval")}
    run_bundle(BUNDLE, "adapt.json", **ov)
    before = torch.load(src, weights_only=True)
    after = torch.load(tmp_path / "bn" / "model.pt", weights_only=True)
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    rec = json.loads((tmp_path / "bn" / "model.validators.json").read_text())  # label-free scores, beside model.pt
    assert list(rec["scores"]) == ["source", "adapted"] and rec["source_checkpoint"] == src
    assert rec["predicted"] in ("source", "adapted") and rec["reason"]

    capsys.readouterr()
    ev = run_bundle(BUNDLE, ["adapt.json", "evaluate.json"], **ov)
    assert 0 <= ev.parser.get_parsed_content("validate#evaluator").state.metrics["dice"] <= 1
    said = [ln for ln in capsys.readouterr().out.splitlines() if "adapted model" in ln]  # the reuse is explicit
    assert len(said) == 1 and str(tmp_path / "bn" / "model.pt") in said[0] and "does not adapt again" in said[0]
    with pytest.raises(FileNotFoundError, match="no adapted model at .*nothing.*adapt.json"):  # nothing to evaluate yet
        run_bundle(BUNDLE, ["adapt.json", "evaluate.json"], **dict(ov, ckpt_dir=str(tmp_path / "nothing")))
    assert len(pd.read_csv(tmp_path / "eval" / "target_test" / "metrics_per_case.csv")) == 3


def test_adapt_3d_first_layers_only(tmp_path, tiny_demo_3d):
    src = _source(tmp_path, tiny_demo_3d, dims=3)
    run_bundle(BUNDLE, "adapt.json", datalist=tiny_demo_3d, bundle_root=str(tmp_path), source_checkpoint=src,
               ckpt_dir=str(tmp_path / "bn"), spatial_dims=3, layers=2, mode="ema", batch_size=1)
    before = torch.load(src, weights_only=True)
    after = torch.load(tmp_path / "bn" / "model.pt", weights_only=True)
    changed = {k.rsplit(".", 1)[0] for k in before if not torch.equal(before[k], after[k])}
    assert len(changed) == 2  # the first two norm layers only
    net = UDAUNet(3)
    net.load_state_dict(after)
    assert net.eval()(torch.rand(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


def test_metadata(verify_metadata):
    verify_metadata(BUNDLE)
    assert os.path.isfile(os.path.join(os.path.dirname(__file__), "..", "..", "bundles", BUNDLE, "docs", "README.md"))
