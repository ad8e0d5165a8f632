import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import s2d_teacher  # noqa: E402


def _datalist_with_labelled_target_training(tiny_demo_2d: str, tmp_path: Path) -> Path:
    """The tiny demo datalist whose oracle_training lists the target_training images with their label files (the
    demo writes a label for every image; the methods never see these)."""
    d = json.loads(Path(tiny_demo_2d).read_text())
    base = Path(tiny_demo_2d).parent
    d["oracle_training"] = [{"image": str(base / it["image"]), "label": str(base / it["image"]).replace("_img", "_seg")}
                            for it in d["target_training"]]
    for key in ("source_training", "source_validation", "target_training", "target_test"):
        d[key] = [{k: str(base / v) if k in ("image", "label") else v for k, v in it.items()} for it in d[key]]
    out = tmp_path / "run" / "tiny.json"
    out.parent.mkdir(parents=True)
    out.write_text(json.dumps(d))
    return out


def _run(tmp_path: Path, datalist: Path, nets: dict) -> Path:
    """``<run>/seed0/s2d_common/{target_forest.joblib, enhancer.pt}`` and ``<run>/seed0/<name>/model.pt``."""
    from monai_uda.data import UDAData
    from monai_uda.methods.shallow2deep.forests import PixelFeatures, save_forests, train_scribble_forest
    from monai_uda.methods.shallow2deep.workflow import loaded_items
    from monai_uda.networks import UDAUNet

    uda = UDAData(str(datalist))
    run = datalist.parent
    common = run / "seed0" / "s2d_common"
    common.mkdir(parents=True)
    it = loaded_items(uda, "target_test", ("image", "label"), progress=False)[0]
    img, lab = np.asarray(it["image"])[0], np.asarray(it["label"])[0] > 0
    scr = np.zeros(img.shape, np.uint8)
    scr[::3, ::3] = np.where(lab[::3, ::3], 2, 1)  # strokes on a grid: both classes
    feats = PixelFeatures(sigmas=(0.7, 1.6))
    forest = train_scribble_forest(None, scr, precomputed_features=[feats(img[None])], n_estimators=3, seed=0, n_jobs=1)
    save_forests(common / "target_forest.joblib", forest, feats)
    torch.manual_seed(0)
    torch.save(UDAUNet(spatial_dims=2, in_channels=1, out_channels=2).state_dict(), common / "enhancer.pt")
    for name, change in nets.items():
        net = UDAUNet(spatial_dims=2, in_channels=uda.in_channels, out_channels=2)
        change(net)
        (run / "seed0" / name).mkdir()
        torch.save(net.state_dict(), run / "seed0" / name / "model.pt")
    return run


def _constant(fg: bool):
    def change(net):  # the last layer's bias decides every pixel
        last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        torch.nn.init.zeros_(last.weight)
        last.bias.data = torch.tensor([-10.0, 10.0] if fg else [10.0, -10.0])
    return change


def test_rows_score_teacher_and_nets_on_both_splits_and_agreement_is_against_the_teacher(tmp_path, tiny_demo_2d):
    from monai_uda.data import UDAData

    dl = _datalist_with_labelled_target_training(tiny_demo_2d, tmp_path)
    run = _run(tmp_path, dl, {"s2d": _constant(True), "s2d_norect": _constant(False)})
    rows = pd.DataFrame(s2d_teacher.seed_rows(run, 0, UDAData(str(dl)), 32))
    n_train, n_test = (len(UDAData(str(dl)).split(k)) for k in ("target_training", "target_test"))
    assert rows.groupby("split").image.nunique().to_dict() == {"target_training": n_train, "target_test": n_test}
    assert set(rows.predictor) == {"enhancer", "s2d", "s2d_norect"}  # s2d_noteacher has no model here: left out
    fg = rows[rows.predictor == "s2d"]
    assert (fg.foreground == 1.0).all() and (rows[rows.predictor == "s2d_norect"].foreground == 0.0).all()
    teacher = rows[rows.predictor == "enhancer"].set_index(["split", "image"])
    # an all-foreground net agrees with its teacher at Dice 2|T| / (|T| + N): the teacher's mask decides
    expect = 2 * teacher.foreground / (teacher.foreground + 1)
    got = fg.set_index(["split", "image"]).agreement
    assert np.allclose(got.loc[expect.index], expect, atol=1e-6)
    assert (teacher.agreement == 1.0).all()
    # and Dice is against the true label: an all-foreground net scores 2|Y| / (|Y| + N)
    import nibabel as nib

    truth = {Path(it["image"]).name: nib.load(it["label"]).get_fdata() > 0
             for key in ("oracle_training", "target_test") for it in UDAData(str(dl)).split(key)}
    for (split, image), dice in fg.set_index(["split", "image"]).dice.items():
        y = truth[image]
        assert dice == pytest.approx(2 * y.sum() / (y.sum() + y.size), rel=1e-6), (split, image)
    s = s2d_teacher.summary(rows)
    assert set(s.columns) >= {"seed", "split", "predictor", "dice", "agreement"} and len(s) == 6


def test_target_training_without_labels_is_left_out_and_reproduction_is_checked(tmp_path, tiny_demo_2d):
    from monai_uda.data import UDAData

    dl = tmp_path / "run" / "tiny.json"
    dl.parent.mkdir(parents=True)
    d = json.loads(Path(tiny_demo_2d).read_text())
    base = Path(tiny_demo_2d).parent
    for key, items in d.items():
        if isinstance(items, list):
            d[key] = [{k: str(base / v) if k in ("image", "label") else v for k, v in it.items()} for it in items]
    dl.write_text(json.dumps(d))
    run = _run(tmp_path, dl, {"s2d": _constant(True)})
    uda = UDAData(str(dl))
    assert s2d_teacher.labelled_target_training(uda) == []  # the demo's oracle images are another subject
    rows = pd.DataFrame(s2d_teacher.seed_rows(run, 0, uda, 32))
    assert set(rows.split) == {"target_test"}
    bench = rows.rename(columns={"predictor": "method", "image": "name"}).assign(dice=lambda t: t.dice + 0.25)
    assert s2d_teacher.check_reproduction(rows, bench) == pytest.approx(0.25)
