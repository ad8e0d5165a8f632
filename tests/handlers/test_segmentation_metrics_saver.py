import math

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import DataLoader, MetaTensor
from monai.engines import SupervisedEvaluator
from monai.transforms import AsDiscreted

from monai_uda.handlers.segmentation_metrics_saver import SegmentationMetricsSaver


class _ThresholdNet(torch.nn.Module):
    """Two-class logits ``[-x, x]``: the argmax prediction is ``x > 0``."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.cat([-x, x], dim=1) + 0 * self.dummy


def _case(name, pred_mask, label_mask, spacing=(1.0, 1.0)):
    affine = torch.diag(torch.tensor([*spacing, 1.0, 1.0], dtype=torch.float64))
    image = torch.as_tensor(pred_mask, dtype=torch.float32)[None] * 2 - 1  # net output argmax == pred_mask
    label = torch.as_tensor(label_mask, dtype=torch.float32)[None]
    return {
        "image": MetaTensor(image, affine=affine, meta={"filename_or_obj": name}),
        "label": MetaTensor(label, affine=affine, meta={"filename_or_obj": name + "_seg"}),
    }


def _cases():
    z = np.zeros((8, 8))
    sq_p, sq_l = z.copy(), z.copy()
    sq_p[2:6, 2:6] = 1
    sq_l[2:6, 4:8] = 1  # dice 0.5, iou 1/3
    ln_p, ln_l = z.copy(), z.copy()
    ln_p[2, 2:8] = 1
    ln_l[2, 2:5] = 1  # with spacing (1, 2): dice 2/3, iou 1/2, hd95 5.5, NSD@1 2/3
    return [
        _case("squares.png", sq_p, sq_l),
        _case("same.png", sq_l, sq_l),
        _case("lines.png", ln_p, ln_l, spacing=(1.0, 2.0)),
    ]


EXPECTED = {
    "squares.png": {"dice": 0.5, "iou": 1 / 3, "f1": 0.5},
    "same.png": {"dice": 1.0, "iou": 1.0, "f1": 1.0, "surface_dice": 1.0, "hd95": 0.0},
    "lines.png": {"dice": 2 / 3, "iou": 0.5, "f1": 2 / 3, "surface_dice": 2 / 3, "hd95": 5.5},
}


def _run(tmp_path, postprocessing, **kwargs):
    loader = DataLoader(_cases(), batch_size=2, shuffle=False, num_workers=0)
    saver = SegmentationMetricsSaver(output_dir=tmp_path, **kwargs)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=loader,
        network=_ThresholdNet(),
        postprocessing=postprocessing,
        val_handlers=[saver],
    )
    evaluator.run()
    return evaluator, saver


@pytest.mark.parametrize("argmaxed", [True, False], ids=["argmax_pred", "logit_pred"])
def test_saver_in_supervised_evaluator(tmp_path, argmaxed):
    post = AsDiscreted(keys="pred", argmax=True) if argmaxed else None
    evaluator, saver = _run(tmp_path, post)

    df = pd.read_csv(tmp_path / "metrics_per_case.csv")
    assert list(df["name"]) == ["squares.png", "same.png", "lines.png"]
    for _, row in df.iterrows():
        for k, v in EXPECTED[row["name"]].items():
            assert row[k] == pytest.approx(v, abs=1e-6), (row["name"], k)

    summary = pd.read_csv(tmp_path / "metrics_summary.csv", index_col="metric")
    assert set(summary.index) == {"dice", "iou", "f1", "surface_dice", "hd95"}
    assert summary.loc["dice", "mean"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3, abs=1e-6)
    assert summary.loc["dice", "n_valid"] == 3

    metrics = evaluator.state.metrics
    for k in ("dice", "iou", "f1", "surface_dice", "hd95"):
        assert metrics[k] == pytest.approx(df[k].mean(), abs=1e-6)
    assert metrics["iou"] == pytest.approx((1 / 3 + 1.0 + 0.5) / 3, abs=1e-6)
    assert str(saver.per_case_path).endswith("metrics_per_case.csv")


def test_saver_spacing_key_prefix_and_second_epoch(tmp_path):
    """An explicit spacing entry overrides the affine; the prefix names files and metric keys."""

    def add_spacing(d):
        d["sp"] = (1.0, 1.0)
        return d

    evaluator, _ = _run(tmp_path, add_spacing, spacing_key="sp", prefix="tgt_", tolerance=1.0)
    df = pd.read_csv(tmp_path / "tgt_metrics_per_case.csv")
    lines = df.set_index("name").loc["lines.png"]
    assert lines["hd95"] == pytest.approx(2.75)  # isotropic distances [0, 0, 0, 1, 2, 3]
    assert lines["surface_dice"] == pytest.approx(7 / 9)
    assert "tgt_dice" in evaluator.state.metrics and "dice" not in evaluator.state.metrics
    # a second run starts from empty buffers
    evaluator.run()
    assert len(pd.read_csv(tmp_path / "tgt_metrics_per_case.csv")) == 3


def test_saver_errors_name_the_key_and_case(tmp_path):
    with pytest.raises(KeyError, match="spacing_key 'nope'"):
        _run(tmp_path, None, spacing_key="nope")

    def break_label(d):
        d["label"] = d["label"] * math.nan
        return d

    with pytest.raises(ValueError, match="case 'squares.png': label contains NaN"):
        _run(tmp_path, break_label)
