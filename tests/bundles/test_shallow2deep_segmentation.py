"""Model-zoo style bundle test of ``shallow2deep_segmentation``: the real configs on a tiny demo pair."""

from __future__ import annotations

import glob
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_uda.bundle import bundle_dir, run_bundle

BUNDLE = "shallow2deep_segmentation"
TINY = {"max_epochs": 1, "epoch_length": 2, "batch_size": 2, "num_samples": 1, "roi_size": [32, 32]}
FORESTS = {"n_forests": 3, "forest_trees": 3, "samples_per_class": 100, "patch_size_range": [24, 64]}


def _ov(root, datalist, **kw):
    return {"bundle_root": str(root), "datalist": datalist, "ckpt_dir": str(root / "models"),
            "output_dir": str(root / "eval"), "workflow_type": None, **kw}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory, tiny_demo_2d):
    """Source forests + enhancer (steps 1-2), built once for the module."""
    root = tmp_path_factory.mktemp("s2d_bundle")
    run_bundle(BUNDLE, "prepare_forests.json", **_ov(root, tiny_demo_2d, **FORESTS))
    wf = run_bundle(BUNDLE, "train_enhancer.json", **_ov(root, tiny_demo_2d, **TINY))
    return root, wf


def test_prepare_and_enhancer(upstream):
    from monai_uda.methods.shallow2deep.forests import load_forests

    root, wf = upstream
    forests, feats = load_forests(root / "models" / "source_forests.joblib")
    assert len(forests) == 3 and feats.num_features(2) == 43
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 2
    sd = torch.load(root / "models" / "enhancer.pt", weights_only=True)
    assert sd["conv_0.conv_0.conv.weight"].shape[1] == 1  # one input channel: a forest probability


def test_enhancer_samples_never_hold_raw_images(upstream):
    from monai_uda.methods.shallow2deep.workflow import enhancer_prepare_batch
    from monai_uda.methods.shallow2deep.s2d import ENHANCER_INPUT_KEY, RF_PROBABILITY

    _, wf = upstream
    sample = wf.parser.get_parsed_content("train#dataset")[0][0]
    assert set(sample) == {"rf_prob", "label"}  # the raw image was dropped after the forest
    assert sample["rf_prob"].meta[ENHANCER_INPUT_KEY] == RF_PROBABILITY
    assert sample["rf_prob"].shape == sample["label"].shape == (1, 32, 32)
    assert 0 <= float(sample["rf_prob"].min()) and float(sample["rf_prob"].max()) <= 1
    with pytest.raises(ValueError, match="raw"):
        enhancer_prepare_batch({"rf_prob": sample["rf_prob"][None], "label": sample["label"][None],
                                "image": torch.zeros(1, 1, 32, 32)})
    network = wf.parser.get_parsed_content("network")  # the PredictionEnhancer wrapper the trainer uses
    with pytest.raises(ValueError, match="never raw images"):
        network(torch.randn(1, 1, 32, 32))


def test_adapt_evaluate_infer_simulated_user(upstream, tiny_demo_2d, tmp_path, caplog):
    root, _ = upstream
    ov = _ov(root, tiny_demo_2d, output_dir=str(tmp_path / "eval"), target_forest_trees=5, scribble_images=1, **TINY)
    with caplog.at_level("WARNING"):
        wf = run_bundle(BUNDLE, "adapt.json", **ov)
    assert "SIMULATED USER" in caplog.text and "labelled pixels" in caplog.text
    assert wf.parser.get_parsed_content("train#trainer").state.iteration == 2
    summary = json.loads((tmp_path / "eval" / "s2d_summary.json").read_text())
    assert summary["scribbles"]["simulated"] and summary["scribble_source"].startswith("SIMULATED")
    assert summary["scribbles"]["scribble_pixels"] == (
        summary["scribbles"]["scribble_bg_pixels"] + summary["scribbles"]["scribble_fg_pixels"]) > 0
    pseudo = wf.parser.get_parsed_content("pseudo_items")
    assert len(pseudo) == 3 and all(0 <= float(p["pseudo"].min()) <= float(p["pseudo"].max()) <= 1 for p in pseudo)
    sd = torch.load(root / "models" / "model.pt", weights_only=True)
    assert "conv_0.conv_0.conv.weight" in sd  # a plain UDAUNet state dict
    rec = json.loads((root / "models" / "model.validators.json").read_text())  # no source network in this method
    assert list(rec["scores"]) == ["adapted"] and rec["left_out"] == {"source_agreement": "no source model"}

    ev = run_bundle(BUNDLE, ["adapt.json", "evaluate.json"], **ov)
    metrics = ev.parser.get_parsed_content("validate#evaluator").state.metrics
    assert 0.0 <= metrics["dice"] <= 1.0

    inf = run_bundle(BUNDLE, "inference.json", workflow_type="infer", bundle_root=str(root),
                     checkpoint=str(root / "models" / "model.pt"),
                     input_dir=os.path.join(os.path.dirname(tiny_demo_2d), "2d"), output_dir=str(tmp_path / "pred"),
                     roi_size=[32, 32])
    assert len(glob.glob(str(tmp_path / "pred" / "*_seg.nii.gz"))) == 9
    y = inf.parser.get_parsed_content("network_def").eval()(torch.rand(1, 1, 32, 32))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 32, 32)  # one tensor, as MONAI Label expects


def test_adapt_with_user_scribble_files_and_ablation_switches(upstream, tiny_demo_2d, tmp_path, caplog):
    root, _ = upstream
    with open(tiny_demo_2d) as fh:
        dl = json.load(fh)
    base = os.path.dirname(tiny_demo_2d)
    img_path = os.path.join(base, dl["target_training"][0]["image"])
    img = nib.load(img_path)
    scr = np.zeros(img.shape, np.uint8)
    h, w = scr.shape[:2]
    scr[: h // 8, : w // 8] = 1  # background corner
    scr[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = 2  # a foreground dab in the middle
    scr_path = str(tmp_path / "scribble.nii.gz")
    nib.save(nib.Nifti1Image(scr, img.affine), scr_path)
    ov = _ov(root, tiny_demo_2d, output_dir=str(tmp_path / "eval"), ckpt_dir=str(tmp_path / "models"),
             forest_file=str(root / "models" / "source_forests.joblib"), enhancer_file=str(root / "models" / "enhancer.pt"),
             target_forest_trees=5, scribbles=[{"image": img_path, "scribble": scr_path}],
             simulate_scribbles_from=None, consistency=False, rectification=False, **TINY)
    with caplog.at_level("WARNING"):
        wf = run_bundle(BUNDLE, "adapt.json", **ov)
    assert "SIMULATED USER" not in caplog.text
    loss = wf.parser.get_parsed_content("loss")
    assert not loss.consistency and not loss.rectification
    info = json.loads((tmp_path / "eval" / "s2d_summary.json").read_text())["scribbles"]
    assert not info["simulated"]
    assert info["scribble_bg_pixels"] == int((scr == 1).sum()) and info["scribble_fg_pixels"] == 16
    assert os.path.isfile(tmp_path / "models" / "model.pt")


def test_metadata_verifies(verify_metadata):
    d = bundle_dir(BUNDLE)
    verify_metadata(BUNDLE)
    readme = (d / "docs" / "README.md").read_text()
    assert "same" in readme.lower() and "simulated" in readme.lower()


@pytest.mark.parametrize("config", ["train_enhancer.json", "adapt.json"])
def test_paper_optimizer_with_a_plateau_schedule_on_the_epoch_mean_loss(upstream, tiny_demo_2d, tmp_path, config):
    """Matskevych et al., Sec. 3.1: Adam 2e-4, weight decay 1e-5, lr x 0.2 on a plateau (here: of the loss)."""
    from ignite.engine import Events

    root, _ = upstream
    ov = _ov(root, tiny_demo_2d, output_dir=str(tmp_path / "eval"), target_forest_trees=5, scribble_images=1,
             **dict(TINY, max_epochs=3), lr_patience=0)
    if config == "train_enhancer.json":  # the schedule without validation (the default validates: below)
        ov.update(ckpt_dir=str(tmp_path / "models"), enhancer_file=str(tmp_path / "models" / "enhancer.pt"),
                  validate_during_training=False)
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(config_file=str(bundle_dir(BUNDLE) / "configs" / config), logging_file=False,
                        meta_file=str(bundle_dir(BUNDLE) / "configs" / "metadata.json"), **ov)
    wf.initialize()
    trainer, opt = wf.parser.get_parsed_content("train#trainer"), wf.parser.get_parsed_content("optimizer")
    assert opt.defaults["lr"] == pytest.approx(2e-4) and opt.defaults["weight_decay"] == pytest.approx(1e-5)
    losses, means, lrs = [], [], []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(
        float((e.state.output[0] if isinstance(e.state.output, list) else e.state.output)["loss"])))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: (means.append(e.state.metrics["train_loss"]),
                                                                 lrs.append(opt.param_groups[0]["lr"])))
    wf.run()
    per_epoch = np.asarray(losses).reshape(3, -1).mean(axis=1)
    np.testing.assert_allclose(means, per_epoch, rtol=1e-6)  # the schedule sees each epoch's mean loss
    expected, best = [], np.inf  # ReduceLROnPlateau(mode min, factor 0.2, patience 0) by hand
    lr = 2e-4
    for m in per_epoch:
        if m < best * (1 - 1e-4):
            best = m
        else:
            lr *= 0.2
        expected.append(lr)
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)


def test_target_forest_has_the_source_forests_tree_count():
    """The Prediction Enhancer learns on single source forests' maps; the target forest it enhances must be of the
    same size (a 100-tree forest's less certain map made it over-segment: docs/benchmarks/s2d_diagnosis/)."""
    configs = bundle_dir(BUNDLE) / "configs"
    source = json.loads((configs / "prepare_forests.json").read_text())["forest_trees"]
    assert json.loads((configs / "adapt.json").read_text())["target_forest_trees"] == source


def test_enhancer_validates_on_source_validation_and_keeps_its_best_epoch(upstream, tiny_demo_2d, tmp_path):
    """The paper's plateau schedule on a validation metric: the Dice on source_validation (each image with a fixed
    forest), the learning rate x 0.2 after lr_patience validations without a better Dice, early stopping, and the
    best epoch's weights as enhancer_file (written when training ends)."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    root, _ = upstream
    models = tmp_path / "models"
    ov = _ov(root, tiny_demo_2d, output_dir=str(tmp_path / "eval"), ckpt_dir=str(models),
             enhancer_file=str(models / "enhancer.pt"), **dict(TINY, max_epochs=6), lr_patience=0,
             early_stop_patience=2)
    wf = ConfigWorkflow(config_file=str(bundle_dir(BUNDLE) / "configs" / "train_enhancer.json"), logging_file=False,
                        meta_file=str(bundle_dir(BUNDLE) / "configs" / "metadata.json"), **ov)
    wf.initialize()
    trainer, opt = wf.parser.get_parsed_content("train#trainer"), wf.parser.get_parsed_content("optimizer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    items = wf.parser.get_parsed_content("validate#dataset").data
    uda = wf.parser.get_parsed_content("uda")
    assert [it["image"] for it in items] == [it["image"] for it in uda.split("source_validation")]  # never target
    assert [it["forest_index"] for it in items] == [k % 3 for k in range(len(items))]
    dice, lrs, weights = [], [], []
    evaluator.add_event_handler(Events.COMPLETED, lambda e: dice.append(e.state.metrics["val_mean_dice"]))
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: (
        lrs.append(opt.param_groups[0]["lr"]),
        weights.append({k: v.clone() for k, v in wf.parser.get_parsed_content("enhancer").state_dict().items()})))
    wf.run()
    assert models.joinpath("enhancer.pt").is_file() and models.joinpath("enhancer_final.pt").is_file()
    assert not models.joinpath("enhancer_best.pt.tmp").exists()
    expected, best, lr, stale = [], -np.inf, 2e-4, 0  # ReduceLROnPlateau(mode max, factor 0.2, patience 0)
    for d in dice:
        if d > best * (1 + 1e-4) if best > 0 else d > best:
            best, stale = d, 0
        else:
            lr, stale = lr * 0.2, stale + 1
        expected.append(lr)
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    # early stopping after 2 validations without a better Dice, else the cap
    first_best = int(np.argmax(dice))
    assert len(dice) == min(6, first_best + 1 + 2)
    saved = torch.load(models / "enhancer.pt", weights_only=True)
    saved = saved.get("model", saved)
    for k, v in weights[first_best].items():
        torch.testing.assert_close(saved[k], v)
    hist = np.genfromtxt(models / "enhancer_validation_history.csv", delimiter=",", names=True)
    np.testing.assert_allclose(np.atleast_1d(hist["val_mean_dice"]), dice, rtol=1e-6)
