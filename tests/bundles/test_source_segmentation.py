"""Model-zoo style bundle test: the real configs of ``source_segmentation`` on tiny data via overrides."""

from __future__ import annotations

import glob
import os

import pandas as pd
import pytest
import torch

from monai_uda.bundle import bundle_dir, run_bundle

BUNDLE = "source_segmentation"
TINY = {"max_epochs": 1, "epoch_length": 2, "batch_size": 1, "num_samples": 1, "roi_size": [32, 32], "val_interval": 1}


def _ov(tmp_path, datalist, **kw):
    return {"bundle_root": str(tmp_path), "datalist": datalist, "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "eval"), **TINY, **kw}


def test_train_evaluate_infer_2d(tmp_path, tiny_demo_2d):
    wf = run_bundle(BUNDLE, "train.json", **_ov(tmp_path, tiny_demo_2d))
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 2
    assert os.path.isfile(tmp_path / "models" / "model.pt")
    assert glob.glob(str(tmp_path / "models" / "resume_*.pt"))
    assert "val_mean_dice" in wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert not glob.glob(str(tmp_path / "models" / "*.tmp*")), "checkpoint temp files left behind"

    ev = run_bundle(BUNDLE, ["train.json", "evaluate.json"], **_ov(tmp_path, tiny_demo_2d))
    state = ev.parser.get_parsed_content("validate#evaluator").state
    assert 0.0 <= state.metrics["dice"] <= 1.0
    per_case = pd.read_csv(tmp_path / "eval" / "target_test" / "metrics_per_case.csv")
    assert len(per_case) == 3  # 1 target test subject x 3 slices
    assert {"dice", "iou", "f1", "surface_dice", "hd95"} <= set(per_case.columns)

    inf = run_bundle(
        BUNDLE, "inference.json", workflow_type="infer", bundle_root=str(tmp_path),
        checkpoint=str(tmp_path / "models" / "model.pt"), input_dir=os.path.join(os.path.dirname(tiny_demo_2d), "2d"),
        output_dir=str(tmp_path / "pred"), roi_size=[32, 32],
    )
    outs = glob.glob(str(tmp_path / "pred" / "*_seg.nii.gz"))
    assert len(outs) == 3 * 3  # target-scanner images of the tiny pair (3 subjects x 3 slices)
    net = inf.parser.get_parsed_content("network_def")
    y = net.eval()(torch.rand(1, 1, 32, 32))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 32, 32)  # one tensor, as MONAI Label expects


def test_resume_continues_from_last_epoch(tmp_path, tiny_demo_2d):
    run_bundle(BUNDLE, "train.json", **_ov(tmp_path, tiny_demo_2d, validate_during_training=False))
    wf = run_bundle(BUNDLE, "train.json", **_ov(tmp_path, tiny_demo_2d, validate_during_training=False,
                                                max_epochs=2, resume=True))
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.epoch == 2 and trainer.state.iteration == 4  # epoch 1 was not redone


def test_oracle_trains_on_target_labels(tmp_path, tiny_demo_2d):
    wf = run_bundle(BUNDLE, ["train.json", "train_oracle.json"],
                    **_ov(tmp_path, tiny_demo_2d, ckpt_dir=str(tmp_path / "oracle")))
    data = wf.parser.get_parsed_content("train#dataset").data
    assert all("_B_" in d["image"] for d in data)  # target scanner
    assert os.path.isfile(tmp_path / "oracle" / "model.pt")


def test_train_3d(tmp_path, tiny_demo_3d):
    wf = run_bundle(BUNDLE, "train.json", **_ov(tmp_path, tiny_demo_3d, spatial_dims=3, roi_size=[32, 32, 32],
                                                epoch_length=1, validate_during_training=False))
    assert wf.parser.get_parsed_content("network_def").spatial_dims == 3
    assert os.path.isfile(tmp_path / "models" / "model.pt")


def test_bad_datalist_error_names_file(tmp_path):
    with pytest.raises(Exception) as err:
        run_bundle(BUNDLE, "train.json", **_ov(tmp_path, str(tmp_path / "nope.json")))
    chain, e = [], err.value
    while e is not None:  # MONAI's config parser wraps the original error
        chain.append(str(e))
        e = e.__cause__
    assert any("datalist file not found" in m and "nope.json" in m for m in chain), chain


def test_metadata_and_network_checks(verify_metadata):
    d = bundle_dir(BUNDLE)
    verify_metadata(BUNDLE)
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/multi_gpu_train.json"):
        assert (d / name).is_file(), name
