"""Bundle test of ``pixel_alignment_segmentation`` (PAST): the real configs on a tiny 2D demo pair."""

from __future__ import annotations

import glob
import json
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from monai_uda.bundle import bundle_dir, run_bundle

BUNDLE = "pixel_alignment_segmentation"
TINY = {"max_epochs": 1, "epoch_length": 2, "batch_size": 1, "num_samples": 1, "roi_size": [32, 32], "val_interval": 1,
        "round_max_epochs": 1, "round_epoch_length": 2}
LIMIT = 2  # first 2 items of every list: X_c = 2 translated source + 2 target slices
TINY_GAN = {"translation_epochs": 1, "translation_epoch_length": 2, "translation_batch_size": 2,
            "translation_patch_size": [32, 32]}


def _ov(tmp_path, datalist, **kw):
    return {"bundle_root": str(tmp_path), "datalist": datalist, "ckpt_dir": str(tmp_path / "models"),
            "output_dir": str(tmp_path / "eval"), **kw}


@pytest.fixture(scope="module")
def past_run(tmp_path_factory, tiny_demo_2d):
    """Translation training, translation, segmentation on translated source, then self-training (K=2)."""
    tmp = tmp_path_factory.mktemp("past")
    out = {"tmp": tmp}
    tiny = {**TINY, "data_limit": LIMIT}
    out["gan"] = run_bundle(BUNDLE, "train_translation.json", **_ov(tmp, tiny_demo_2d, **TINY_GAN, data_limit=LIMIT))
    out["translate"] = run_bundle(BUNDLE, ["train_translation.json", "translate.json"],
                                  **_ov(tmp, tiny_demo_2d, data_limit=LIMIT))
    out["train"] = run_bundle(BUNDLE, "train.json", **_ov(tmp, tiny_demo_2d, **tiny))
    out["self_train"] = run_bundle(BUNDLE, ["train.json", "self_train.json"], **_ov(tmp, tiny_demo_2d, **tiny))
    return out


def test_translation_and_translated_datalist(past_run, tiny_demo_2d):
    tmp = past_run["tmp"]
    trainer = past_run["gan"].parser.get_parsed_content("translation#trainer")
    assert trainer.state.iteration == 2
    ckpt = torch.load(tmp / "models" / "translation" / "cyclegan.pt", weights_only=True)
    state = ckpt.get("cyclegan", ckpt)  # the default translator: an IntensityTranslator that records its architecture
    assert "g_st.mapping.values" in state and state["_extra_state"]["class"] == "IntensityTranslator"
    dl = json.load(open(tmp / "models" / "translated" / "datalist.json"))
    orig = json.load(open(tiny_demo_2d))
    assert len(dl["source_training"]) == LIMIT
    base = os.path.dirname(tiny_demo_2d)
    for new, old in zip(dl["source_training"], orig["source_training"]):
        assert new["image"].startswith(str(tmp / "models" / "translated" / "source_training"))
        assert new["label"] == os.path.join(base, old["label"])  # the source labels are kept
        a, b = nib.load(new["image"]), nib.load(os.path.join(base, old["image"]))
        assert a.shape == b.shape and np.allclose(a.affine, b.affine)
        assert not np.allclose(a.get_fdata(), b.get_fdata())  # the generator changed the image
    assert [it["image"] for it in dl["target_training"]] == [os.path.join(base, it["image"]) for it in orig["target_training"][:LIMIT]]
    assert not glob.glob(str(tmp / "models" / "**" / ".tmp*"), recursive=True), "temp files left behind"


def test_segmentation_on_translated_source(past_run):
    wf = past_run["train"]
    data = wf.parser.get_parsed_content("train#dataset").data
    assert all("/translated/source_training/" in d["image"] for d in data)
    assert os.path.isfile(past_run["tmp"] / "models" / "model.pt")


def test_step4_pairs_translated_source_images_with_their_real_labels(past_run, tiny_demo_2d):
    """Algorithm 1, line 4: S is trained on (X^_s, y_s): every translated image with the real label of its source image."""
    wf = past_run["train"]
    data = wf.parser.get_parsed_content("train#dataset").data
    orig = json.load(open(tiny_demo_2d))["source_training"][:LIMIT]
    base = os.path.dirname(tiny_demo_2d)
    assert len(data) == LIMIT
    for d, o in zip(data, orig):
        assert os.path.basename(d["image"]).endswith(os.path.basename(o["image"]))  # NNNNN_<source image name>
        assert d["label"] == os.path.join(base, o["label"])
        real = nib.load(os.path.join(base, o["label"])).get_fdata()
        assert np.array_equal(nib.load(d["label"]).get_fdata(), real) and real.any()
        assert nib.load(d["image"]).shape == real.shape


def _initialised_network(tmp, datalist, **kw):
    """train.json's network after the config's initialize steps only (no training)."""
    from monai.bundle import ConfigWorkflow

    d = bundle_dir(BUNDLE) / "configs"
    wf = ConfigWorkflow(config_file=str(d / "train.json"), meta_file=str(d / "metadata.json"), workflow_type="train",
                        logging_file=False, **_ov(tmp, datalist, **TINY, data_limit=LIMIT, **kw))
    wf.initialize()
    return wf.parser.get_parsed_content("network"), wf.parser.get_parsed_content("source_dir")


def test_first_segmenter_starts_from_the_source_model(past_run, tiny_demo_2d):
    """Default (init_from_source): before any training step the segmenter holds the source model's weights (the one
    train.json trained into <ckpt_dir>/source at the same budget); with init_from_source false, a fresh network."""
    net, source_dir = _initialised_network(past_run["tmp"], tiny_demo_2d)
    source = torch.load(os.path.join(source_dir, "model.pt"), weights_only=True)
    source = source.get("model", source)
    own = net.state_dict()
    assert set(own) == set(source) and all(torch.equal(own[k], source[k]) for k in own)
    scratch, _ = _initialised_network(past_run["tmp"], tiny_demo_2d, init_from_source=False)
    assert not all(torch.equal(scratch.state_dict()[k], source[k]) for k in source if source[k].is_floating_point())


def test_self_training_rounds(past_run):
    tmp = past_run["tmp"]
    parser = past_run["self_train"].parser
    labeller = parser.get_parsed_content("pseudo_labeller")
    state = json.load(open(tmp / "models" / "self_train" / "rounds_state.json"))
    assert state["completed"] == [0, 1, 2]
    assert len(state["items"]) == LIMIT + LIMIT  # X_c = translated source + target training (Algorithm 1, line 5)
    assert not any("oracle" in i or "_seg" in i for i in state["items"])
    # round 0 pseudo-labels keep the top q=0.6 of the pixels of each predicted class
    lab = nib.load(tmp / "models" / "self_train" / state["rounds"]["0"]["labels"][0]["label"]).get_fdata()
    assert labeller.q_at(0) == pytest.approx(0.6) and parser.get_parsed_content("translated_source_labels") == "pseudo"
    assert type(labeller).__name__ == "TopQSelector" and parser.get_parsed_content("labelled_items") == []
    kept = (lab != 255).mean()
    assert 0.5 < kept <= 0.6 + 1e-6
    assert os.path.isfile(tmp / "models" / "self_train" / "model.pt")
    final = torch.load(tmp / "models" / "self_train" / "model.pt", weights_only=True)
    r2 = torch.load(tmp / "models" / "self_train" / "round_2" / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], r2[k]) for k in final)
    rec = json.load(open(tmp / "models" / "self_train" / "model.validators.json"))  # scores of the model served
    assert rec["checkpoint"] == str(tmp / "models" / "self_train" / "model.pt") and "adapted" in rec["scores"]
    assert rec["source_checkpoint"] == str(tmp / "models" / "source" / "model.pt")  # the one init_from_source used
    assert list(rec["scores"]) == ["source", "adapted"]


def test_self_training_resumes_after_crash(past_run, tiny_demo_2d, tmp_path):
    """Completed rounds are not redone: with rounds 0-1 on disk, only round 2 trains."""
    import shutil

    src = past_run["tmp"] / "models"
    shutil.copytree(src, tmp_path / "models")
    st_dir = tmp_path / "models" / "self_train"
    state = json.load(open(st_dir / "rounds_state.json"))
    state["completed"] = [0, 1]
    state["rounds"].pop("2")
    state["items"] = [i.replace(str(src), str(tmp_path / "models")) for i in state["items"]]
    json.dump(state, open(st_dir / "rounds_state.json", "w"))
    shutil.rmtree(st_dir / "round_2")
    # the translated datalist points at the copied images
    dl_path = tmp_path / "models" / "translated" / "datalist.json"
    dl_path.write_text(dl_path.read_text().replace(str(src), str(tmp_path / "models")))
    wf = run_bundle(BUNDLE, ["train.json", "self_train.json"], **_ov(tmp_path, tiny_demo_2d, **TINY, data_limit=LIMIT))
    history = wf.parser.get_parsed_content("round_trainer").history
    assert [(h["round"], h["iterations"]) for h in history] == [(2, 2)]  # one round of 1 epoch x 2 iterations, not two
    assert json.load(open(st_dir / "rounds_state.json"))["completed"] == [0, 1, 2]


def test_self_training_with_real_translated_source_labels(past_run, tiny_demo_2d, tmp_path):
    """The "real" variant: only the target is pseudo-labelled; the translated source trains with its real labels."""
    tmp = past_run["tmp"]
    wf = run_bundle(BUNDLE, ["train.json", "self_train.json"],
                    **_ov(tmp, tiny_demo_2d, **TINY, data_limit=LIMIT, num_rounds=1, translated_source_labels="real",
                          self_train_dir=str(tmp_path / "real")))
    state = json.load(open(tmp_path / "real" / "rounds_state.json"))
    uda = wf.parser.get_parsed_content("uda")
    assert state["items"] == [it["image"] for it in uda.split("target_training", limit=LIMIT)]  # X_t only
    rounds = wf.parser.get_parsed_content("round_trainer")
    labelled = wf.parser.get_parsed_content("labelled_items")
    assert len(labelled) == LIMIT and all("/translated/source_training/" in it["image"] and "label" in it
                                          for it in labelled)
    assert len(rounds.trainer.data_loader.dataset) == 2 * LIMIT  # pseudo-labelled target + labelled source
    assert (tmp_path / "real" / "model.pt").is_file()


def test_evaluate_infer_and_figure(past_run, tiny_demo_2d, tmp_path):
    tmp = past_run["tmp"]
    ev = run_bundle(BUNDLE, ["train.json", "evaluate.json"], **_ov(tmp, tiny_demo_2d, **TINY, data_limit=LIMIT))
    assert 0.0 <= ev.parser.get_parsed_content("validate#evaluator").state.metrics["dice"] <= 1.0
    assert len(pd.read_csv(tmp / "eval" / "target_test" / "metrics_per_case.csv")) == LIMIT
    inf = run_bundle(BUNDLE, "inference.json", workflow_type="infer", bundle_root=str(tmp),
                     input_dir=os.path.join(os.path.dirname(tiny_demo_2d), "2d"), input_pattern="*_B_z24_img.nii.gz",
                     output_dir=str(tmp_path / "pred"),
                     roi_size=[32, 32])
    assert len(glob.glob(str(tmp_path / "pred" / "*_seg.nii.gz"))) == 3
    y = inf.parser.get_parsed_content("network_def").eval()(torch.rand(1, 1, 32, 32))
    assert isinstance(y, torch.Tensor) and y.shape == (1, 2, 32, 32)

    from monai_uda.benchmarks.past_figure import past_figure

    png = past_figure(tiny_demo_2d, str(tmp / "models" / "translation" / "cyclegan.pt"), str(tmp_path / "f.png"), 2)
    assert open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_roi_option_crops_translated_pair(tmp_path, tiny_demo_2d):
    ov = _ov(tmp_path, tiny_demo_2d, **TINY_GAN, data_limit=1)
    run_bundle(BUNDLE, "train_translation.json", **ov)
    run_bundle(BUNDLE, ["train_translation.json", "translate.json"], **ov, roi_fractions=[[0.25, 0.75], [0.25, 0.75]])
    dl = json.load(open(tmp_path / "models" / "translated" / "datalist.json"))
    base = os.path.dirname(tiny_demo_2d)
    orig = json.load(open(tiny_demo_2d))
    for key in ("source_training", "target_test"):
        for field in ("image", "label"):
            new, old = nib.load(dl[key][0][field]), nib.load(os.path.join(base, orig[key][0][field]))
            assert new.shape == tuple(s // 2 for s in old.shape)  # [S/4 : 3S/4] per axis
            assert np.allclose(new.affine[:2, 3], old.affine[:2, :2] @ [old.shape[0] // 4, old.shape[1] // 4] + old.affine[:2, 3])


def test_cyclegan_layer_trains_and_translates(tmp_path, tiny_demo_2d):
    """The CycleGAN option (configs/cyclegan.json): no residual output; its checkpoint is translated with the same layer."""
    ov = _ov(tmp_path, tiny_demo_2d, **TINY_GAN, data_limit=1)
    wf = run_bundle(BUNDLE, ["train_translation.json", "cyclegan.json"], **ov)
    gan = wf.parser.get_parsed_content("cyclegan")
    assert type(gan).__name__ == "CycleGAN" and gan.g_st.residual_output is False
    assert wf.parser.get_parsed_content("translation#trainer").state.iteration == 2
    run_bundle(BUNDLE, ["train_translation.json", "cyclegan.json", "translate.json"], **_ov(tmp_path, tiny_demo_2d, data_limit=1))
    dl = json.load(open(tmp_path / "models" / "translated" / "datalist.json"))
    assert len(dl["source_training"]) == 1 and os.path.isfile(dl["source_training"][0]["image"])
    from monai_uda.benchmarks.past_figure import figure_generator, past_figure

    ckpt = str(tmp_path / "models" / "translation" / "cyclegan.pt")
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():  # the figure's defaults rebuild the generator cyclegan.json trained
        assert torch.allclose(figure_generator(ckpt)(x), gan.g_st.eval()(x), atol=1e-6)
    assert open(past_figure(tiny_demo_2d, ckpt, str(tmp_path / "f.png"), 1), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Exception, match="holds a CycleGAN"):  # the default layers cannot load it: a one-line error
        run_bundle(BUNDLE, ["train_translation.json", "translate.json"],
                   **_ov(tmp_path, tiny_demo_2d, data_limit=1, overwrite=True))


def test_metadata_and_files(verify_metadata):
    d = bundle_dir(BUNDLE)
    verify_metadata(BUNDLE)
    for name in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/train_translation.json",
                 "configs/cyclegan.json", "configs/multi_gpu_cyclegan.json", "configs/translate.json",
                 "configs/train.json", "configs/self_train.json", "configs/evaluate.json", "configs/inference.json"):
        assert (d / name).is_file(), name
