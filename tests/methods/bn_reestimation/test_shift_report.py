import os

import pandas as pd
import pytest
import torch

from monai_uda.methods.bn_reestimation.reestimation import list_norm_layers, reestimate_bn
from monai_uda.methods.bn_reestimation.shift_report import format_table, shift_report
from monai_uda.networks.unet import UDAUNet


def _net():
    torch.manual_seed(0)
    return UDAUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 4, 4, 4, 4)).eval()


def test_shift_report_writes_csv_png_and_returns_table(tmp_path):
    net = _net()
    g = torch.Generator().manual_seed(0)
    src = [{"image": torch.rand(2, 1, 16, 16, generator=g)} for _ in range(2)]
    tgt = [{"image": torch.rand(2, 1, 16, 16, generator=g) * 3 + 2} for _ in range(2)]
    out = tmp_path / "report"
    df = shift_report(net, src, tgt, str(out))
    names = [n for n, _ in list_norm_layers(net)]
    assert list(df["layer"]) == names and list(df["index"]) == list(range(len(names)))
    assert (df["channels"] == 4).all()
    assert (df["w2_normalized"] > 0).all()
    assert df.attrs["aggregate"] == pytest.approx(df["w2_normalized_per_channel"].mean())
    back = pd.read_csv(out / "shift.csv")
    pd.testing.assert_frame_equal(back, df, check_dtype=False, check_exact=False, rtol=1e-9)
    png = (out / "shift.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [f for f in os.listdir(out) if f.startswith(".tmp_")]
    text = format_table(df)
    assert "conv_0.conv_0" in text and "mean over" in text and ".adn.N" not in text
    # no shift: target = source -> zero distance everywhere
    df0 = shift_report(net, src, src, str(tmp_path / "same"), plot=False)
    assert (df0["w2_normalized"].abs() < 1e-8).all()
    assert not (tmp_path / "same" / "shift.png").exists()


def test_shift_report_with_reference_model(tmp_path):
    net = _net()
    tgt = [torch.rand(2, 1, 16, 16) * 3 + 2]
    adapted = reestimate_bn(_net(), tgt, mode="reset", progress=False)
    df = shift_report(net, None, tgt, str(tmp_path), reference=adapted, covariance="diagonal")
    assert "reference" in df.attrs["kind"]
    # first norm layer: both models share the conv in front of it, so its inputs are identical
    assert df["w2_normalized"].iloc[0] == pytest.approx(0.0, abs=1e-8)
    assert (df["w2_normalized"].iloc[1:] > 0).all()
    out = shift_report(net, None, tgt, str(tmp_path / "o"), reference=adapted, where="output", plot=False)
    assert out["w2_normalized"].iloc[0] > 0
    run = shift_report(net, None, None, str(tmp_path / "r"), reference=adapted, statistics="running", plot=False)
    assert (run["w2_normalized"] > 0).all()
    df_same = shift_report(adapted, None, tgt, str(tmp_path / "b"), reference=adapted, plot=False)
    assert (df_same["w2_normalized"].abs() < 1e-8).all()
    with pytest.raises(ValueError, match="source_data"):
        shift_report(net, None, tgt, str(tmp_path / "c"))
