import math
import os

import numpy as np
import pandas as pd
import pytest
import torch

from monai_uda.evaluation.metrics import case_metrics, summarize, write_case_metrics


def _squares():
    """pred: rows 2-5, cols 2-5; label: rows 2-5, cols 4-7 -> 16 px each, overlap 8."""
    pred = np.zeros((10, 10), dtype=np.int64)
    label = np.zeros((10, 10), dtype=np.int64)
    pred[2:6, 2:6] = 1
    label[2:6, 4:8] = 1
    return pred, label


def _lines():
    """pred: row 2, cols 2-7 (6 px); label: row 2, cols 2-4 (3 px).

    A 1-pixel line is its own boundary. pred->label distances along axis 1 are [0, 0, 0, 1, 2, 3] * s1,
    label->pred distances are all 0.
    """
    pred = np.zeros((10, 10), dtype=np.int64)
    label = np.zeros((10, 10), dtype=np.int64)
    pred[2, 2:8] = 1
    label[2, 2:5] = 1
    return pred, label


def test_two_squares_dice_iou_f1():
    pred, label = _squares()
    m = case_metrics(pred, label)
    assert set(m) == {"dice", "iou", "f1", "surface_dice", "hd95"}
    assert m["dice"] == pytest.approx(2 * 8 / 32)
    assert m["iou"] == pytest.approx(8 / 24)
    assert m["f1"] == pytest.approx(m["dice"])


def test_lines_hd95_and_surface_dice_with_anisotropic_spacing():
    pred, label = _lines()
    # isotropic: pred->label distances [0,0,0,1,2,3]; torch.quantile(0.95) -> 2 + 0.75 * (3 - 2)
    m = case_metrics(pred, label, tolerance=1.0)
    assert m["dice"] == pytest.approx(2 * 3 / 9)
    assert m["iou"] == pytest.approx(3 / 6)
    assert m["hd95"] == pytest.approx(2.75)
    # NSD: (4 of 6 pred boundary px within 1 + 3 of 3 label px) / 9
    assert m["surface_dice"] == pytest.approx(7 / 9)

    # spacing 2 along axis 1 doubles every distance: [0,0,0,2,4,6]
    m2 = case_metrics(pred, label, spacing=(1.0, 2.0), tolerance=1.0)
    assert m2["hd95"] == pytest.approx(5.5)
    assert m2["surface_dice"] == pytest.approx((3 + 3) / 9)
    assert m2["dice"] == pytest.approx(m["dice"])  # overlap metrics ignore spacing
    # spacing along the other axis does not change anything here
    m3 = case_metrics(pred, label, spacing=(2.0, 1.0), tolerance=1.0)
    assert m3["hd95"] == pytest.approx(2.75)
    assert m3["surface_dice"] == pytest.approx(7 / 9)
    # the tolerance is in physical units: 4.0 mm covers distances 0, 2, 4 with spacing 2
    m4 = case_metrics(pred, label, spacing=(1.0, 2.0), tolerance=4.0)
    assert m4["surface_dice"] == pytest.approx((5 + 3) / 9)


def test_3d_cubes_and_planes():
    pred = np.zeros((10, 10, 10), dtype=np.int64)
    label = np.zeros_like(pred)
    pred[2:6, 2:6, 2:6] = 1
    label[4:8, 2:6, 2:6] = 1
    m = case_metrics(torch.as_tensor(pred)[None], torch.as_tensor(label)[None])  # (1, D, H, W)
    assert m["dice"] == pytest.approx(64 / 128)
    assert m["iou"] == pytest.approx(32 / 96)

    # two parallel 4x4 planes 3 voxels apart along axis 0: every boundary distance is 3 * s0
    pred = np.zeros((8, 8, 8), dtype=np.int64)
    label = np.zeros_like(pred)
    pred[2, 2:6, 2:6] = 1
    label[5, 2:6, 2:6] = 1
    m = case_metrics(pred, label, spacing=(1.0, 1.0, 1.0), tolerance=3.0)
    assert m["hd95"] == pytest.approx(3.0)
    assert m["surface_dice"] == pytest.approx(1.0)
    assert m["dice"] == 0.0
    m = case_metrics(pred, label, spacing=(2.0, 1.0, 1.0), tolerance=3.0)
    assert m["hd95"] == pytest.approx(6.0)
    assert m["surface_dice"] == pytest.approx(0.0)
    m = case_metrics(pred, label, spacing=(1.0, 0.5, 0.5), tolerance=3.0)
    assert m["hd95"] == pytest.approx(3.0)


def test_layouts_and_types_agree():
    pred, label = _lines()
    ref = case_metrics(pred, label)
    for p, y in [
        (pred[None], label[None]),
        (torch.as_tensor(pred), torch.as_tensor(label).float()),
        (pred.astype(bool), label.astype(np.float32)[None]),
    ]:
        assert case_metrics(p, y) == pytest.approx(ref)


def test_f1_equals_dice_on_random_binary_maps():
    rng = np.random.default_rng(0)
    for _ in range(3):
        p, y = rng.integers(0, 2, (12, 12)), rng.integers(0, 2, (12, 12))
        m = case_metrics(p, y)
        assert m["f1"] == pytest.approx(m["dice"], abs=1e-6)
        assert m["iou"] == pytest.approx(m["dice"] / (2 - m["dice"]), abs=1e-6)


def test_multiclass_per_class_keys_and_mean():
    label = np.zeros((10, 10), dtype=np.int64)
    label[1:4, 1:4] = 1
    label[5:9, 5:9] = 2
    pred = label.copy()
    pred[5:9, 5:9] = 0
    pred[5:9, 7:9] = 2  # class 2: 8 of 16 px predicted, overlap 8 -> dice 2*8/24
    m = case_metrics(pred, label, num_classes=3)
    assert m["dice_1"] == pytest.approx(1.0)
    assert m["dice_2"] == pytest.approx(16 / 24)
    assert m["dice"] == pytest.approx((1.0 + 16 / 24) / 2)
    assert m["iou_2"] == pytest.approx(8 / 16)
    assert m["hd95_1"] == pytest.approx(0.0)
    assert "dice_0" not in m
    mb = case_metrics(pred, label, num_classes=3, include_background=True)
    assert "dice_0" in mb and mb["dice_1"] == pytest.approx(1.0)


def test_empty_structures():
    empty = np.zeros((8, 8), dtype=np.int64)
    full = empty.copy()
    full[2:5, 2:5] = 1
    keys = ("dice", "iou", "f1", "surface_dice", "hd95")
    # MONAI default ignore_empty=True: empty label -> every metric NaN
    for pred in (empty, full):
        m = case_metrics(pred, empty)
        assert all(math.isnan(m[k]) for k in keys)
    # ignore_empty=False: both empty is a perfect match, a false positive is a total miss
    m = case_metrics(empty, empty, ignore_empty=False)
    assert [m[k] for k in keys] == [1.0, 1.0, 1.0, 1.0, 0.0]
    m = case_metrics(full, empty, ignore_empty=False)
    assert [m[k] for k in keys] == [0.0, 0.0, 0.0, 0.0, math.inf]
    # missed structure: zero overlap, HD95 infinite
    for ignore in (True, False):
        m = case_metrics(empty, full, ignore_empty=ignore)
        assert [m[k] for k in keys] == [0.0, 0.0, 0.0, 0.0, math.inf]


@pytest.mark.parametrize("which", ["pred", "label"])
def test_nan_and_bad_values_name_the_input(which):
    good = np.zeros((8, 8), dtype=np.float32)
    bad = good.copy()
    bad[1, 1] = np.nan
    args = {"pred": good, "label": good, which: bad}
    with pytest.raises(ValueError, match=f"{which} contains NaN"):
        case_metrics(**args)
    bad = good.copy()
    bad[1, 1] = 2
    args = {"pred": good, "label": good, which: bad}
    with pytest.raises(ValueError, match=f"{which} has values"):
        case_metrics(**args)
    bad = good + 0.3
    args = {"pred": good, "label": good, which: bad}
    with pytest.raises(ValueError, match=f"{which} has non-integer"):
        case_metrics(**args)
    args = {"pred": good, "label": good, which: np.zeros((2, 8, 8, 8))}
    with pytest.raises(ValueError, match=f"{which} must have a single channel"):
        case_metrics(**args)


def test_bad_arguments():
    z = np.zeros((8, 8))
    with pytest.raises(ValueError, match="same spatial shape"):
        case_metrics(z, np.zeros((8, 9)))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(z, z, spacing=(1.0, 1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        case_metrics(z, z, spacing=(1.0, -1.0))
    with pytest.raises(ValueError, match="tolerance"):
        case_metrics(z, z, tolerance=float("nan"))
    with pytest.raises(ValueError, match="num_classes"):
        case_metrics(z, z, num_classes=1)


def test_summarize_is_nan_and_inf_aware():
    df = pd.DataFrame(
        {
            "name": ["a", "b", "c", "d"],
            "dice": [0.5, 1.0, np.nan, 0.0],
            "hd95": [1.0, 3.0, np.nan, np.inf],
        }
    )
    s = summarize(df)
    assert list(s.index) == ["dice", "hd95"]
    assert s.loc["dice", "mean"] == pytest.approx(0.5)
    assert s.loc["dice", "median"] == pytest.approx(0.5)
    assert s.loc["dice", "std"] == pytest.approx(np.std([0.5, 1.0, 0.0]))
    assert s.loc["hd95", "mean"] == pytest.approx(2.0)
    assert (s.loc["hd95", "n_valid"], s.loc["hd95", "n_nan"], s.loc["hd95", "n_inf"]) == (2, 1, 1)
    assert (s.loc["dice", "n_valid"], s.loc["dice", "n_nan"], s.loc["dice", "n_inf"]) == (3, 1, 0)


def test_write_case_metrics(tmp_path):
    pred, label = _squares()
    rows = [{"name": "sq", **case_metrics(pred, label)}, {"name": "same", **case_metrics(label, label)}]
    per_case, summary = write_case_metrics(rows, tmp_path / "out", prefix="target_")
    assert os.path.basename(per_case) == "target_metrics_per_case.csv"
    assert os.path.basename(summary) == "target_metrics_summary.csv"
    assert sorted(os.listdir(tmp_path / "out")) == ["target_metrics_per_case.csv", "target_metrics_summary.csv"]
    df = pd.read_csv(per_case)
    assert list(df["name"]) == ["sq", "same"]
    assert df["dice"].tolist() == pytest.approx([0.5, 1.0])
    s = pd.read_csv(summary, index_col="metric")
    assert s.loc["dice", "mean"] == pytest.approx(0.75)
    assert s.loc["iou", "median"] == pytest.approx((1 / 3 + 1) / 2)
