"""Experiment tracking: ``--tracking mlflow`` (MONAI's default MLflow settings) on the real bundle configs.

MONAI 1.6's ``MLFlowHandler`` refuses MLflow's file store (``file://``), so the runs go to a local SQLite
store in a temp folder: ``--tracking_uri sqlite:///...`` for the source training (the CLI, in a subprocess),
and MONAI's default, ``<output_dir>/mlruns.db``, for the engine-less BatchNorm re-estimation.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch

from monai_uda.bundle import bundle_dir, run_bundle

mlflow = pytest.importorskip("mlflow", reason="the dev extra installs mlflow-skinny")

TINY = ["--max_epochs", "1", "--epoch_length", "2", "--batch_size", "1", "--num_samples", "1", "--roi_size", "[32,32]",
        "--val_interval", "1"]


@pytest.fixture(autouse=True)
def _local_store_only(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # it would take priority over the configs
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _runs(uri):
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    return client, runs


def _scalar_tags(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        acc = EventAccumulator(f)
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_source_train_evaluate_and_bn_adapt_are_tracked(tmp_path, tiny_demo_2d):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlruns.db'}"
    (tmp_path / "store").mkdir()
    src = tmp_path / "src"
    d = bundle_dir("source_segmentation")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(d / "configs" / "train.json"),
           "--meta_file", str(d / "configs" / "metadata.json"), "--logging_file", "False",
           "--tracking", "mlflow", "--tracking_uri", uri, "--experiment_name", "uda_test",
           "--save_execute_config", str(tmp_path / "store" / "train_config.json"),
           "--bundle_root", str(src), "--datalist", tiny_demo_2d, "--ckpt_dir", str(src / "models"),
           "--output_dir", str(src / "eval"), *TINY]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]

    client, runs = _runs(uri)
    assert len(runs) == 1  # the trainer's and the validator's handlers share one run
    train = runs[0]
    assert train.info.status == "FINISHED"
    assert train.info.experiment_id == client.get_experiment_by_name("uda_test").experiment_id
    assert {"train_loss", "train_mean_dice", "val_mean_dice", "lr_group_0"} <= set(train.data.metrics)
    assert 0.0 <= train.data.metrics["val_mean_dice"] <= 1.0
    assert [m.step for m in client.get_metric_history(train.info.run_id, "train_loss")] == [1, 2]  # per iteration
    assert train.data.params["max_epochs"] == "1" and train.data.params["epoch_length"] == "2"
    assert [a.path for a in client.list_artifacts(train.info.run_id)] == ["train_config.json"]
    assert {"train_loss", "val_mean_dice"} <= _scalar_tags(src / "eval")  # TensorBoard as well

    # evaluate.json layered on train.json: the validator's run is closed in finalize, the train run untouched
    run_bundle("source_segmentation", ["train.json", "evaluate.json"], tracking="mlflow", tracking_uri=uri,
               experiment_name="uda_test", bundle_root=str(src), datalist=tiny_demo_2d, ckpt_dir=str(src / "models"),
               output_dir=str(src / "eval"), roi_size=[32, 32])
    _, runs = _runs(uri)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    ev = next(r for r in runs if r.info.run_id != train.info.run_id)
    assert 0.0 <= ev.data.metrics["dice"] <= 1.0 and "hd95" in ev.data.metrics
    assert "dice" not in client.get_run(train.info.run_id).data.metrics

    # an engine-less adaptation: BN re-estimation logs params + statistics shift to <output_dir>/mlruns.db
    bn_out = tmp_path / "bn" / "eval"
    ov = {"bundle_root": str(tmp_path / "bn"), "datalist": tiny_demo_2d, "ckpt_dir": str(tmp_path / "bn" / "models"),
          "source_checkpoint": str(src / "models" / "model.pt")}
    run_bundle("bn_reestimation_segmentation", "adapt.json", tracking="mlflow", output_dir=str(bn_out), **ov)
    assert (bn_out / "mlruns.db").is_file()
    _, runs = _runs(f"sqlite:///{bn_out / 'mlruns.db'}")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    m, p = runs[0].data.metrics, runs[0].data.params
    assert p["mode"] == "ema" and p["target_images"] == "3" and p["source_checkpoint"] == ov["source_checkpoint"]
    assert m["bn_layers"] == m["bn_layers_changed"] > 0 and m["bn_mean_abs_shift"] > 0
    assert "bn_layers_changed" in _scalar_tags(bn_out)

    # without --tracking nothing goes to MLflow, TensorBoard still gets the scalars
    plain_out = tmp_path / "bn_plain"
    run_bundle("bn_reestimation_segmentation", "adapt.json", output_dir=str(plain_out), **ov)
    assert not (plain_out / "mlruns.db").exists() and "bn_mean_abs_shift" in _scalar_tags(plain_out)


def test_translation_engine_with_own_ids_and_translate_step_are_tracked(tmp_path, tiny_demo_2d):
    """PAST's CycleGAN trainer is ``translation#trainer`` with a dict output: tracked through ``train#``."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    ov = {"bundle_root": str(tmp_path), "datalist": tiny_demo_2d, "ckpt_dir": str(tmp_path / "models"),
          "output_dir": str(tmp_path / "eval"), "data_limit": 2, "tracking": "mlflow", "tracking_uri": uri}
    run_bundle("pixel_alignment_segmentation", "train_translation.json", experiment_name="translation",
               translation_epochs=1, translation_epoch_length=2, translation_batch_size=2,
               translation_patch_size=[32, 32], **ov)
    run_bundle("pixel_alignment_segmentation", ["train_translation.json", "translate.json"],
               experiment_name="translate", **ov)
    client = mlflow.MlflowClient(tracking_uri=uri)
    (gan,) = client.search_runs([client.get_experiment_by_name("translation").experiment_id])
    assert gan.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(gan.info.run_id, "train_loss")] == [1, 2]
    assert "cyclegan_g_loss" in _scalar_tags(tmp_path / "eval")
    (tr,) = client.search_runs([client.get_experiment_by_name("translate").experiment_id])
    assert tr.info.status == "FINISHED" and tr.data.params["data_limit"] == "2"
    assert tr.data.metrics == {"translated/source_training_items": 2.0, "translated/source_validation_items": 2.0}


def test_flatten_summary_and_untracked_logging(tmp_path):
    from monai_uda.bundle.tracking import flatten_summary, log_to_trackers

    summary = {"method": "buda", "num_rounds": 2, "epochs_per_round": [1, 1], "adapt_seconds": 1.5,
               "foreground_fraction": {0: 0.2, 1: 0.25, 2: float("nan")}, "collapsed_rounds": [],
               "train_history": [{"round": 1, "train_loss": 0.5}, {"round": 2, "train_loss": 0.25}],
               "scribbles": {"simulated": True, "scribble_pixels": 186}}
    params, metrics = flatten_summary(summary)
    assert params == {"method": "buda", "epochs_per_round": "[1, 1]", "collapsed_rounds": "[]",
                      "scribbles/simulated": True}
    assert metrics == {"num_rounds": 2.0, "adapt_seconds": 1.5, "foreground_fraction": {0: 0.2, 1: 0.25},
                       "train_history/train_loss": {1: 0.5, 2: 0.25}, "scribbles/scribble_pixels": 186.0}
    # no MLflow handler in the list (no --tracking): nothing is logged but the TensorBoard scalars
    assert log_to_trackers([object()], summary=summary, tensorboard_dir=str(tmp_path)) == []
    assert {"train_history/train_loss", "foreground_fraction", "adapt_seconds"} <= _scalar_tags(tmp_path)


def test_step_engine_runs_its_step_once():
    from ignite.engine import Engine, Events

    from monai_uda.bundle.tracking import StepEngine

    calls = []
    engine = StepEngine(lambda: calls.append(1) or "done")
    seen = []
    engine.add_event_handler(Events.COMPLETED, lambda e: seen.append(e.state.output))
    assert isinstance(engine, Engine)
    engine.run()
    assert calls == [1] and seen == ["done"] and engine.state.iteration == 1
    with pytest.raises(TypeError, match="callable"):
        StepEngine("not callable")
