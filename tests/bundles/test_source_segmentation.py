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


def _stop_epoch(curve: list[float], patience: int, max_epochs: int) -> int:
    """The epoch at which ignite's EarlyStopping (min_delta 0) ends a training with this validation curve."""
    best, counter = None, 0
    for epoch, score in enumerate(curve, 1):
        if best is None or score > best:
            best, counter = score, 0
        else:
            counter += 1
            if counter >= patience:
                return epoch
    return max_epochs


def test_best_checkpoint_and_early_stopping(tmp_path, tiny_demo_2d):
    """model.pt holds the best validation epoch's weights, model_final.pt the last; training stops after
    ``early_stop_patience`` validations without improvement; the curve is in validation_history.csv."""
    from monai_uda.benchmarks.methods import training_record

    wf = run_bundle(BUNDLE, "train.json", **_ov(tmp_path, tiny_demo_2d, max_epochs=8, epoch_length=1,
                                                early_stop_patience=2, learning_rate=0.01, precise_bn=True))
    models = tmp_path / "models"
    history = pd.read_csv(models / "validation_history.csv")
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert list(history.epoch) == list(range(1, trainer.state.epoch + 1))
    assert list(history.iteration) == list(history.epoch)  # epoch_length 1
    assert trainer.state.epoch == _stop_epoch(list(history.val_mean_dice), 2, 8)
    best_epoch = int(history.epoch[history.val_mean_dice.idxmax()])
    best = torch.load(models / "model.pt", map_location="cpu", weights_only=True)
    final = torch.load(models / "model_final.pt", map_location="cpu", weights_only=True)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    same = all(torch.equal(best[k], final[k]) for k in best if not k.endswith(stats))  # the weights
    assert same == (best_epoch == trainer.state.epoch)
    # with precise_bn (an option, off by default) model.pt's BatchNorm statistics are those of the whole
    # training images, not the crops'
    from monai_uda.bundle import precise_bn

    k = "conv_0.conv_0.adn.N.running_mean"
    assert not torch.equal(best[k], final[k])
    precise_bn(models / "model.pt", wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("uda"),
               "source_training")
    torch.testing.assert_close(torch.load(models / "model.pt", weights_only=True)[k], best[k])
    rec = training_record(str(models / "model.pt"))
    assert rec == {"val_dice": round(float(history.val_mean_dice.max()), 4), "best_iteration": best_epoch,
                   "iterations": trainer.state.epoch}


def test_oracle_selects_on_oracle_validation(tmp_path, tiny_demo_2d):
    import json

    dl = json.load(open(tiny_demo_2d))
    base = os.path.dirname(tiny_demo_2d)
    dl["base_dir"] = base  # relative paths stay those of the fixture's folder
    dl["oracle_validation"] = dl["oracle_training"][:1]
    path = tmp_path / "with_oracle_validation.json"
    path.write_text(json.dumps(dl))
    wf = run_bundle(BUNDLE, ["train.json", "train_oracle.json"], **_ov(tmp_path, str(path)))
    assert wf.parser.get_parsed_content("validate_during_training") is True
    data = wf.parser.get_parsed_content("validate#dataset#data")
    assert [d["image"] for d in data] == [os.path.join(base, it["image"]) for it in dl["oracle_validation"]]
    assert (tmp_path / "models" / "validation_history.csv").is_file()
    # without the split the oracle trains to max_epochs and keeps its last weights
    wf = run_bundle(BUNDLE, ["train.json", "train_oracle.json"], **_ov(tmp_path / "plain", tiny_demo_2d))
    assert wf.parser.get_parsed_content("validate_during_training") is False


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


def test_resume_keeps_the_best_checkpoint_and_the_patience(tmp_path, tiny_demo_2d):
    """The resume checkpoint carries the early stopper's counter and best score, the best-checkpoint saver's
    record and the learning-rate schedule: after a resume, a worse validation cannot overwrite model.pt."""
    from monai.bundle import ConfigWorkflow

    ov = _ov(tmp_path, tiny_demo_2d, max_epochs=3, epoch_length=1, early_stop_patience=50, lr_patience=0,
             learning_rate=0.01)
    run_bundle(BUNDLE, "train.json", **ov)
    history = pd.read_csv(tmp_path / "models" / "validation_history.csv")
    d = bundle_dir(BUNDLE) / "configs"
    wf = ConfigWorkflow(config_file=str(d / "train.json"), meta_file=str(d / "metadata.json"), logging_file=False,
                        workflow_type=None, **{**ov, "max_epochs": 6, "resume": True})
    wf.initialize()
    best = float(history.val_mean_dice.max())
    early = wf.parser.get_parsed_content("early_stop")._handler
    saved = wf.parser.get_parsed_content("best_saver")._key_metric_checkpoint._saved
    assert early.best_score == pytest.approx(best) and len(saved) == 1
    assert saved[0].priority == pytest.approx(best)
    # the early stopper counts the validations since the best one, as in an uninterrupted run
    assert early.counter == len(history) - 1 - int(history.val_mean_dice.idxmax())
    lr = wf.parser.get_parsed_content("optimizer").param_groups[0]["lr"]
    assert lr == pytest.approx(float(history.lr.iloc[-1]))  # the plateau schedule's rate, not the initial one
