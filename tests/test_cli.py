"""The ``monai-uda`` command line (fast paths; the demo/benchmark runs are covered in tests/benchmarks)."""

from __future__ import annotations

import json
import math

import pytest

from monai_uda.cli import main


def test_datalist_command_writes_pair(shared_data, tmp_path, capsys):
    out = tmp_path / "A1.json"
    assert main(["datalist", "--pair", "A1", "--data-root", str(shared_data), "--out", str(out)]) == 0
    dl = json.loads(out.read_text())
    assert dl["name"] == "A1" and len(dl["target_training"]) == 10
    assert "wrote" in capsys.readouterr().out


def test_datalist_command_bad_root_is_a_clear_error(tmp_path, capsys):
    code = main(["datalist", "--pair", "A1", "--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.json")])
    assert code == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_validate_command(tiny_demo_2d, capsys):
    assert main(["validate", tiny_demo_2d]) == 0
    assert "ok" in capsys.readouterr().out


def test_benchmark_unknown_method(tiny_demo_2d, tmp_path, capsys):
    code = main(["benchmark", "--datalist", tiny_demo_2d, "--methods", "source,nonsense", "--out", str(tmp_path)])
    assert code == 2
    assert "nonsense" in capsys.readouterr().err


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("demo", "datalist", "validate", "benchmark", "shift"):
        assert cmd in out


@pytest.mark.realdata
@pytest.mark.parametrize("pair", ["A1", "D1"])
def test_quick_benchmark_on_real_pair(shared_data, tmp_path, capsys, pair):
    """The README's ``monai-uda benchmark --pair ... --quick`` on the real data: CSV, table and chart."""
    import pandas as pd

    out = tmp_path / pair
    code = main(["benchmark", "--pair", pair, "--data-root", str(shared_data), "--methods", "source,oracle",
                 "--quick", "--out", str(out)])
    assert code == 0
    for f in ("results.csv", "results.md", "results.png"):
        assert (out / f).is_file(), f
    df = pd.read_csv(out / "results.csv")
    assert list(df.method) == ["source", "oracle"] and set(df.pair) == {pair}
    for col in ("dice", "iou", "surface_dice"):
        assert df[col].between(0.0, 1.0).all(), df[col]
    src, orc = (float(df.loc[df.method == m, "dice"].iloc[0]) for m in ("source", "oracle"))
    gap = df.loc[df.method == "oracle", "gap_closed"].iloc[0]
    assert gap == 1.0 if orc > src + 1e-8 else math.isnan(gap)  # (oracle - source) / (oracle - source)
    assert f"| source |" in capsys.readouterr().out  # the printed summary table
