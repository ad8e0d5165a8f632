"""Bundle test of ``early_feature_refinement_segmentation``: the real configs on the tiny demo pair via overrides."""

from __future__ import annotations

import glob
import json
import os

import pandas as pd
import torch

from monai_uda.bundle import bundle_dir, run_bundle
from monai_uda.networks.unet import UDAUNet

BUNDLE = "early_feature_refinement_segmentation"
TINY = {"max_epochs": 2, "epoch_length": 1, "batch_size": 1, "num_samples": 1, "roi_size": [32, 32],
        "head_max_epochs": 1, "head_epoch_length": 1, "source_max_epochs": 1, "source_epoch_length": 1}


def _ov(tmp_path, datalist, **kw):
    return {"bundle_root": str(tmp_path), "datalist": datalist, "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "eval"), **TINY, **kw}


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_chain_2d_head_adapt_evaluate_oneshot_infer(tmp_path, tiny_demo_2d):
    models = tmp_path / "models"
    # no checkpoint at all: adapt.json runs train_head.json, which trains a quick source model first
    # (the paper's stopping rule alone, the default; the optional divergence guard is checked below)
    wf = run_bundle(BUNDLE, "adapt.json", **_ov(tmp_path, tiny_demo_2d))  # the defaults: no divergence guard
    for name in ("source/model.pt", "head_model.pt", "model.pt", "refinement_summary.json", "model.validators.json"):
        assert (models / name).is_file(), name
    rec = json.loads((models / "model.validators.json").read_text())  # the adapted and the source model
    assert list(rec["scores"]) == ["source", "adapted"]
    assert rec["source_checkpoint"] == str(models / "source" / "model.pt")
    assert not glob.glob(str(models / "**" / ".tmp*"), recursive=True), "temp files left behind"
    trainer = wf.parser.get_parsed_content("adapt#trainer")
    data = wf.parser.get_parsed_content("adapt#dataset").data
    assert data and all("_B_" in d["image"] and "label" not in d for d in data)  # target images only

    # the adapted model is a plain UDAUNet state dict; only the early stage's (conv_0) weights differ from
    # stage 2; with the default reestimate_bn "all" every BatchNorm layer's running statistics follow the target
    adapted = _load(models / "model.pt")
    UDAUNet(spatial_dims=2, in_channels=1, out_channels=2).load_state_dict(adapted)  # strict
    head = _load(models / "head_model.pt")
    before = {k[len("network."):]: v for k, v in head.items() if k.startswith("network.")}
    assert set(before) == set(adapted)
    stats = ("running_mean", "running_var", "num_batches_tracked")
    changed = {k for k in adapted if not torch.equal(adapted[k], before[k]) and not k.endswith(stats)}
    assert changed and all(k.startswith("conv_0.") for k in changed), sorted(changed)
    assert any(k.endswith("weight") and "conv" in k for k in changed)  # the weights were refined
    summary = json.loads((models / "refinement_summary.json").read_text())
    assert summary["epochs_to_convergence"] == trainer.state.epoch <= 2
    assert len(summary["agreement_history"]) == trainer.state.epoch
    assert all(0.0 <= v <= 1.0 for v in summary["agreement_history"])
    assert not summary["agreement_diverged"] and summary["restored_epoch"] is None

    # the optional divergence guard (off by default): d_0 is measured first; a restore puts back exactly that
    # epoch's weights
    guard_dir = tmp_path / "guard"
    gw = run_bundle(BUNDLE, "adapt.json", **_ov(tmp_path, tiny_demo_2d, ckpt_dir=str(guard_dir), restore_on_divergence=True,
                                                head_checkpoint=str(models / "head_model.pt"), max_epochs=3))
    g = json.loads((guard_dir / "refinement_summary.json").read_text())
    gstate = gw.parser.get_parsed_content("adapt#trainer").state
    assert len(g["agreement_history"]) == gstate.epoch + 1 and g["epochs_to_convergence"] == gstate.epoch
    hist = g["agreement_history"]
    if g["agreement_diverged"]:
        best = max(range(len(hist) - 1), key=lambda i: hist[i])
        assert g["restored_epoch"] == best and hist[-1] < hist[best] - 0.02
        if best == 0:
            assert all(torch.equal(v, before[k]) for k, v in _load(guard_dir / "model.pt").items())
    else:
        assert g["restored_epoch"] is None
        assert all(v >= max(hist[: i + 1]) - 0.02 for i, v in enumerate(hist))  # never fell below best - delta

    # evaluate.json: the fixed adapted model on the target test set, Dice and surface Dice (mm)
    ev = run_bundle(BUNDLE, ["adapt.json", "evaluate.json"], **_ov(tmp_path, tiny_demo_2d))
    metrics = ev.parser.get_parsed_content("validate#evaluator").state.metrics
    assert 0.0 <= metrics["dice"] <= 1.0 and 0.0 <= metrics["surface_dice"] <= 1.0
    per_case = pd.read_csv(tmp_path / "eval" / "target_test" / "metrics_per_case.csv")
    assert len(per_case) == 3 and {"dice", "surface_dice", "hd95"} <= set(per_case.columns)

    # one-shot (Table 2): each target test image refined alone, from the same stage-2 model
    os_wf = run_bundle(BUNDLE, ["adapt.json", "adapt_oneshot.json"], **_ov(tmp_path, tiny_demo_2d, max_epochs=1))
    oneshot = json.loads((tmp_path / "eval" / "oneshot" / "oneshot_summary.json").read_text())
    assert oneshot["items"] == 3 and oneshot["max_epochs_to_convergence"] == 1
    assert len(pd.read_csv(tmp_path / "eval" / "oneshot" / "metrics_per_case.csv")) == 3
    seg = os_wf.parser.get_parsed_content("segmentor")
    assert all(torch.equal(v, head[k]) for k, v in seg.state_dict().items())  # evaluator's model untouched

    # inference.json: final segmentation only, one tensor
    inf = run_bundle(
        BUNDLE, "inference.json", workflow_type="infer", bundle_root=str(tmp_path),
        checkpoint=str(models / "model.pt"), input_dir=os.path.join(os.path.dirname(tiny_demo_2d), "2d"),
        input_pattern="sub004_B_*img.nii.gz", output_dir=str(tmp_path / "pred"), roi_size=[32, 32],
    )
    assert len(glob.glob(str(tmp_path / "pred" / "*_seg.nii.gz"))) == 3  # the target test subject's 3 slices
    y = inf.parser.get_parsed_content("network_def").eval()(torch.rand(1, 1, 32, 32))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 32, 32)


def test_train_head_keeps_given_source_base_frozen(tmp_path, tiny_demo_2d):
    torch.manual_seed(0)
    src = UDAUNet(spatial_dims=2, in_channels=1, out_channels=2).state_dict()
    torch.save(src, tmp_path / "source.pt")
    wf = run_bundle(BUNDLE, "train_head.json",
                    **_ov(tmp_path, tiny_demo_2d, source_checkpoint=str(tmp_path / "source.pt"), max_epochs=1))
    assert not (tmp_path / "models" / "source").exists()  # the given checkpoint was used, nothing trained
    head = _load(tmp_path / "models" / "head_model.pt")
    for k, v in src.items():  # weights and BatchNorm statistics of the base are bit-identical
        assert torch.equal(head["network." + k], v), k
    seg = wf.parser.get_parsed_content("segmentor")
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 1
    optimised = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in seg.heads.parameters()}  # stage 2 trains the head only
    assert not any(p.requires_grad for p in seg.network.parameters())
    assert {k for k in head if not k.startswith("network.")} == {"heads." + k for k in seg.heads.state_dict()}


def test_adapt_3d_tiny(tmp_path, tiny_demo_3d):
    torch.manual_seed(0)
    torch.save(UDAUNet(spatial_dims=3, in_channels=1, out_channels=2).state_dict(), tmp_path / "source.pt")
    ov = _ov(tmp_path, tiny_demo_3d, spatial_dims=3, roi_size=[32, 32, 32], max_epochs=1,
             source_checkpoint=str(tmp_path / "source.pt"), sw_batch_size=8)
    wf = run_bundle(BUNDLE, "adapt.json", **ov)
    assert wf.parser.get_parsed_content("segmentor").network.spatial_dims == 3
    adapted = _load(tmp_path / "models" / "model.pt")
    UDAUNet(spatial_dims=3, in_channels=1, out_channels=2).load_state_dict(adapted)
    summary = json.loads((tmp_path / "models" / "refinement_summary.json").read_text())
    assert summary["epochs_to_convergence"] == 1 and len(summary["agreement_history"]) == 1  # d_1 (no guard: no d_0)


def test_cbst_configuration_3d(tmp_path, tiny_demo_3d):
    """Zou et al.'s CBST baseline (adapt_st.json + adapt_cbst.json on adapt.json): pseudo-labels in each volume's
    own grid (ST and CBST in 2D: tests/benchmarks/test_methods_early.py)."""
    import nibabel as nib
    import numpy as np

    torch.manual_seed(0)
    torch.save(UDAUNet(spatial_dims=3, in_channels=1, out_channels=2).state_dict(), tmp_path / "source.pt")
    ov = _ov(tmp_path, tiny_demo_3d, spatial_dims=3, roi_size=[32, 32, 32], max_epochs=1, num_rounds=1,
             source_checkpoint=str(tmp_path / "source.pt"), sw_batch_size=8, progress=False)
    layers = ["adapt.json", "adapt_st.json", "adapt_cbst.json"]
    wf = run_bundle(BUNDLE, layers, **ov)
    mode = wf.parser.get_parsed_content("method")
    labeller = wf.parser.get_parsed_content("pseudo_labeller")
    rounds = wf.parser.get_parsed_content("round_trainer")
    assert type(labeller).__name__ == "SelfTrainingSelector" and labeller.mode == mode == "cbst"
    assert type(rounds.loss_function).__name__ == "PseudoLabelCrossEntropyLoss" and rounds.epochs == [1]
    assert [h["iterations"] for h in rounds.history] == [1]
    out = tmp_path / "models" / mode
    state = json.loads((out / "rounds_state.json").read_text())
    assert state["completed"] == [0, 1]
    lab = nib.load(out / state["rounds"]["0"]["labels"][0]["label"])
    img = nib.load(state["items"][0])
    assert lab.shape == img.shape[:3] and np.allclose(lab.affine, img.affine, atol=1e-4)
    kept = np.asarray(lab.dataobj) != 255
    assert 0.0 < kept.mean() <= 0.2 + 1e-3  # round 0 keeps the most confident 20 % (of all target voxels)
    UDAUNet(spatial_dims=3, in_channels=1, out_channels=2).load_state_dict(_load(out / "model.pt"))
    assert list(json.loads((out / "model.validators.json").read_text())["scores"]) == ["source", "adapted"]  # 3D too
    summary = json.loads((out / "adapt_summary.json").read_text())
    assert summary["method"] == mode and summary["epochs_per_round"] == [1]
    assert not (tmp_path / "models" / "model.pt").exists()  # the refinement's output is left alone


def test_metadata_and_files(verify_metadata):
    d = bundle_dir(BUNDLE)
    verify_metadata(BUNDLE)
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/train_head.json", "configs/adapt.json",
                 "configs/adapt_oneshot.json", "configs/evaluate.json", "configs/inference.json",
                 "configs/adapt_st.json", "configs/adapt_cbst.json"):
        assert (d / name).is_file(), name
