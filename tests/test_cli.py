"""The ``monai-uda`` command line (fast paths; the demo/benchmark runs are covered in tests/benchmarks)."""

from __future__ import annotations

import json

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
