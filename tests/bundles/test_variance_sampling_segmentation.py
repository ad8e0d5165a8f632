"""Bundle test of ``variance_sampling_segmentation`` (BUDA-Seg): the real configs on tiny demo pairs."""

from __future__ import annotations

import glob
import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_uda.bundle import resolve_source_checkpoint
from monai_uda.engines.self_training import split_epochs
from monai_uda.bundle import bundle_dir, run_bundle
from monai_uda.networks.unet import UDAUNet

BUNDLE = "variance_sampling_segmentation"
TINY = {"max_epochs": 2, "epoch_length": 1, "batch_size": 1, "num_samples": 1, "roi_size": [32, 32], "num_rounds": 2}


@pytest.fixture(scope="module")
def source_2d(tmp_path_factory, tiny_demo_2d):
    """A tiny source model trained once by the source bundle (shared by the tests of this module)."""
    out = tmp_path_factory.mktemp("source2d")
    return resolve_source_checkpoint(None, str(out), datalist=tiny_demo_2d, max_epochs=1, epoch_length=2, batch_size=1,
                                    num_samples=1, roi_size=[32, 32], validate_during_training=False)


def _ov(tmp_path, datalist, source=None, **kw):
    return {"bundle_root": str(tmp_path), "datalist": datalist, "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "eval"), "source_checkpoint": source, **TINY, **kw}


def _rounds(tmp_path, method="buda"):
    """Each variant's pseudo-label rounds live in their own folder (a later variant never resumes another's)."""
    return tmp_path / "eval" / "pseudo_labels" / method


def _state(tmp_path, method="buda"):
    with open(_rounds(tmp_path, method) / "rounds_state.json") as f:
        return json.load(f)


def test_adapt_evaluate_infer_2d(tmp_path, tiny_demo_2d, source_2d):
    wf = run_bundle(BUNDLE, "adapt.json", **_ov(tmp_path, tiny_demo_2d, source_2d))
    rounds = wf.parser.get_parsed_content("round_trainer")
    uda = wf.parser.get_parsed_content("uda")
    assert wf.parser.get_parsed_content("method") == "buda" and rounds.epochs == [1, 1]
    assert type(wf.parser.get_parsed_content("pseudo_labeller")).__name__ == "ArgmaxLabeller"
    assert rounds.trainer_class.__name__ == "VarianceSupervisedTrainer"
    assert type(rounds.loss_function).__name__ == "VariationalSamplingDiceLoss"
    state = _state(tmp_path)
    assert state["completed"] == [0, 1, 2]
    rec = json.loads((tmp_path / "models" / "model.validators.json").read_text())
    assert list(rec["scores"]) == ["source", "adapted"] and rec["source_checkpoint"] == source_2d
    n_target = len(uda.split("target_training"))
    for r in range(3):  # round 0 = source labels, then one per training round, each in its own folder
        labels = glob.glob(str(_rounds(tmp_path) / f"round_{r}" / "*_img.nii.gz"))
        assert len(labels) == n_target
        lab = np.asarray(nib.load(labels[0]).dataobj)
        img = np.asarray(nib.load(state["items"][0] if r == 0 else uda.split("target_training")[0]["image"]).dataobj)
        assert lab.shape == img.shape and set(np.unique(lab)) <= {0, 1}
    assert [h["iterations"] for h in rounds.history] == [1, 1]  # a SupervisedTrainer per round
    assert not glob.glob(str(tmp_path / "**" / ".tmp-*"), recursive=True), "temp files left behind"

    # the adapted model is a plain UDAUNet state dict (variance head saved separately)
    sd = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    UDAUNet(spatial_dims=2, in_channels=1, out_channels=2).load_state_dict(sd)
    full = torch.load(tmp_path / "models" / "variance_model.pt", weights_only=True)
    assert any(k.startswith("variance_conv") for k in full) and not any(k.startswith("variance_conv") for k in sd)
    summary = json.loads((tmp_path / "models" / "adapt_summary.json").read_text())
    assert summary["method"] == "buda" and summary["epochs_per_round"] == [1, 1]

    ev = run_bundle(BUNDLE, ["adapt.json", "evaluate.json"], **_ov(tmp_path, tiny_demo_2d, source_2d, roi_size=[96, 96]))
    metrics = ev.parser.get_parsed_content("validate#evaluator").state.metrics
    assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["iou"] <= metrics["dice"] + 1e-6
    assert (tmp_path / "eval" / "target_test" / "metrics_summary.csv").is_file()

    images = os.path.join(os.path.dirname(tiny_demo_2d), "2d")
    inf = run_bundle(BUNDLE, "inference.json", workflow_type="infer", bundle_root=str(tmp_path),
                     checkpoint=str(tmp_path / "models" / "model.pt"), input_dir=images,
                     output_dir=str(tmp_path / "pred"))
    assert len(glob.glob(str(tmp_path / "pred" / "*_seg.nii.gz"))) == 9
    net = inf.parser.get_parsed_content("network_def")
    y = net.eval()(torch.rand(1, 1, 32, 32))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 32, 32)  # one tensor, as MONAI Label expects

    unc = run_bundle(BUNDLE, ["inference.json", "inference_uncertainty.json"], workflow_type="infer",
                     bundle_root=str(tmp_path), input_dir=images, output_dir=str(tmp_path / "var"))
    var_files = glob.glob(str(tmp_path / "var" / "*_variance.nii.gz"))
    assert len(var_files) == 9
    v = np.asarray(nib.load(var_files[0]).dataobj)
    assert v.shape[-1] == 2 or v.shape[0] == 2  # one variance map per class
    assert np.isfinite(v).all() and (v > 0).all()
    y = unc.parser.get_parsed_content("network_def").eval()(torch.rand(1, 1, 32, 32))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 32, 32)


def test_resume_does_not_redo_completed_rounds(tmp_path, tiny_demo_2d, source_2d):
    run_bundle(BUNDLE, "adapt.json", **_ov(tmp_path, tiny_demo_2d, source_2d, num_rounds=1, max_epochs=1))
    round1 = glob.glob(str(_rounds(tmp_path) / "round_1" / "*.nii.gz"))[0]
    mtime = os.path.getmtime(round1)
    wf = run_bundle(BUNDLE, "adapt.json", **_ov(tmp_path, tiny_demo_2d, source_2d, num_rounds=2))
    assert _state(tmp_path)["completed"] == [0, 1, 2]
    assert os.path.getmtime(round1) == mtime  # round 1 was not relabelled
    assert [h["round"] for h in wf.parser.get_parsed_content("round_trainer").history] == [2]  # only round 2 trained


def test_selftrain_fresh_rounds_and_collapse_warning(tmp_path, tiny_demo_2d, source_2d):
    with pytest.warns(RuntimeWarning, match="collapsed"):
        wf = run_bundle(BUNDLE, ["adapt.json", "adapt_selftrain.json"],
                        **_ov(tmp_path, tiny_demo_2d, source_2d, round_init="source", num_rounds=1, max_epochs=1,
                              collapse_threshold=0.99))
    rounds = wf.parser.get_parsed_content("round_trainer")
    assert type(rounds.loss_function).__name__ == "DiceLoss"  # the no-variance ablation
    assert rounds.trainer_class.__name__ == "SupervisedTrainer"
    assert wf.parser.get_parsed_content("method") == "selftrain"
    state = _state(tmp_path, "selftrain")
    assert state["rounds"]["1"]["fresh_model"] is True and state["rounds"]["0"]["collapsed"] is True
    assert not (tmp_path / "models" / "variance_model.pt").exists()
    UDAUNet(spatial_dims=2, out_channels=2).load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))


def test_mcdropout_configuration(tmp_path, tiny_demo_2d, source_2d):
    """Wu et al.'s baseline is a configuration: dropout network, MC-dropout labeller, inferer and loss."""
    wf = run_bundle(BUNDLE, ["adapt.json", "adapt_mcdropout.json"],
                    **_ov(tmp_path, tiny_demo_2d, source_2d, num_rounds=1, max_epochs=1, mc_threshold=0.0))
    labeller = wf.parser.get_parsed_content("pseudo_labeller")
    rounds = wf.parser.get_parsed_content("round_trainer")
    assert type(labeller).__name__ == "MCDropoutLabeller" and labeller.num_passes == 4
    assert type(rounds.inferer).__name__ == "MCDropoutInferer" and rounds.inferer.num_passes == 4
    assert type(rounds.loss_function).__name__ == "UncertaintyRectifiedLoss"
    net = wf.parser.get_parsed_content("network")
    from monai_uda.methods.buda.mc_dropout import dropout_modules

    assert {m.p for m in dropout_modules(net)} == {0.1}  # UDAUNet(dropout=0.1)
    state = _state(tmp_path, "mcdropout")
    assert state["completed"] == [0, 1] and [h["iterations"] for h in rounds.history] == [1]
    # threshold 0: every pixel with any MC disagreement is ignored (255), the confident ones keep their argmax
    lab = np.asarray(nib.load(_rounds(tmp_path, "mcdropout") / state["rounds"]["1"]["labels"][0]["label"]).dataobj)
    assert (lab == 255).any() and set(np.unique(lab)) <= {0, 1, 255}
    summary = json.loads((tmp_path / "models" / "adapt_summary.json").read_text())
    assert summary["method"] == "mcdropout" and not (tmp_path / "models" / "variance_model.pt").exists()
    UDAUNet(spatial_dims=2, out_channels=2).load_state_dict(torch.load(tmp_path / "models" / "model.pt", weights_only=True))


def test_adapt_3d_labels_in_image_space(tmp_path, tiny_demo_3d):
    src = resolve_source_checkpoint(None, str(tmp_path / "src"), datalist=tiny_demo_3d, spatial_dims=3, max_epochs=1,
                                   epoch_length=1, batch_size=1, num_samples=1, roi_size=[32, 32, 32],
                                   validate_during_training=False)
    run_bundle(BUNDLE, "adapt.json", **_ov(tmp_path, tiny_demo_3d, src, spatial_dims=3, roi_size=[32, 32, 32],
                                           num_rounds=1, max_epochs=1))
    state = _state(tmp_path)
    lab = nib.load(_rounds(tmp_path) / state["rounds"]["1"]["labels"][0]["label"])
    img = nib.load(state["items"][0])
    assert lab.shape == img.shape[:3] and np.allclose(lab.affine, img.affine, atol=1e-4)


def test_errors_name_the_argument(tmp_path, tiny_demo_2d, source_2d):
    with pytest.raises(Exception) as err:
        run_bundle(BUNDLE, "adapt.json", **_ov(tmp_path, tiny_demo_2d, str(tmp_path / "nope.pt")))
    chain, e = [], err.value
    while e is not None:
        chain.append(str(e))
        e = e.__cause__
    assert any("source_checkpoint" in m and "nope.pt" in m for m in chain), chain
    with pytest.raises(ValueError, match="num_rounds"):
        split_epochs(1, 2)
    assert split_epochs(5, 3) == [2, 2, 1]


def test_metadata_and_files(verify_metadata):
    d = bundle_dir(BUNDLE)
    verify_metadata(BUNDLE)
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/adapt.json", "configs/evaluate.json",
                 "configs/inference.json", "configs/inference_uncertainty.json", "configs/adapt_selftrain.json",
                 "configs/adapt_mcdropout.json"):
        assert (d / name).is_file(), name


def test_resume_after_a_crash_is_bit_identical(tmp_path, tiny_demo_2d, source_2d, killed_in_round):
    """Killed during round 2 of 2 and resumed: the same weights and history as an uninterrupted run."""
    whole = tmp_path / "whole"
    run_bundle(BUNDLE, "adapt.json", **_ov(whole, tiny_demo_2d, source_2d))
    crashed = tmp_path / "crashed"
    killed_in_round(2)
    with pytest.raises(KeyboardInterrupt):
        run_bundle(BUNDLE, "adapt.json", **_ov(crashed, tiny_demo_2d, source_2d))
    killed_in_round(None)
    assert _state(crashed)["completed"] == [0, 1]
    wf = run_bundle(BUNDLE, "adapt.json", **_ov(crashed, tiny_demo_2d, source_2d))  # a new run resumes
    assert [h["round"] for h in wf.parser.get_parsed_content("round_trainer").history] == [2]  # only round 2 ran
    a = torch.load(whole / "models" / "model.pt", weights_only=True)
    b = torch.load(crashed / "models" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for folder in (whole, crashed):
        summary = json.loads((folder / "models" / "adapt_summary.json").read_text())
        assert [h["round"] for h in summary["train_history"]] == [1, 2]
    same = [json.loads((f / "models" / "adapt_summary.json").read_text())["train_history"] for f in (whole, crashed)]
    assert same[0] == same[1]
