"""Errors of bundle runs reach the user as the error that names the file or key, not MONAI's wrapper."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from monai_uda.bundle import bundle_dir, run_bundle
from monai_uda.utils import user_error


def test_user_error_is_found_in_the_chain():
    try:
        try:
            raise FileNotFoundError("checkpoint not found: x.pt")
        except FileNotFoundError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as wrapped:
        assert isinstance(user_error(wrapped), FileNotFoundError)
    assert user_error(RuntimeError("no cause")) is None


def test_run_bundle_raises_the_users_error(tmp_path, tiny_demo_2d):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*absent.pt"):
        run_bundle("bn_reestimation_segmentation", "adapt.json", datalist=tiny_demo_2d, bundle_root=str(tmp_path),
                   source_checkpoint=str(tmp_path / "absent.pt"))


def test_monai_bundle_command_line_prints_one_line(tmp_path, tiny_demo_2d):
    cfg = bundle_dir("bn_reestimation_segmentation") / "configs" / "adapt.json"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cfg), "--datalist", tiny_demo_2d,
           "--bundle_root", str(tmp_path), "--source_checkpoint", str(tmp_path / "absent.pt")]
    env = {k: v for k, v in os.environ.items() if k != "MONAI_UDA_DEBUG"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if "error" in ln.lower() or "Traceback" in ln]
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert errors == [f"monai.bundle run: error: checkpoint not found: {tmp_path / 'absent.pt'} "
                      "(MONAI_UDA_DEBUG=1 shows the traceback)"]


def test_the_hook_leaves_bugs_and_debug_runs_alone(monkeypatch, capsys):
    import monai_uda.bundle.run as run

    seen = []
    monkeypatch.setattr(sys, "excepthook", lambda *a: seen.append(a[1]))
    monkeypatch.setenv("MONAI_UDA_DEBUG", "1")
    run.install_one_line_errors()
    assert not getattr(sys.excepthook, "_monai_uda", False)  # debug: the full traceback stays
    monkeypatch.delenv("MONAI_UDA_DEBUG")
    run.install_one_line_errors()
    bug = ZeroDivisionError("a bug")
    sys.excepthook(ZeroDivisionError, bug, None)
    assert seen == [bug]  # not a user error: handed to the previous hook, traceback and all
    sys.excepthook(KeyError, KeyError("'lable' is not a key"), None)
    assert capsys.readouterr().err.strip() == ("monai.bundle run: error: 'lable' is not a key "
                                               "(MONAI_UDA_DEBUG=1 shows the traceback)")


@pytest.mark.parametrize("case", ["missing", "malformed"])
def test_config_file_errors_before_any_config_is_read(tmp_path, case):
    """MONAI reads --config_file before any monai_uda import in it; the installed start-up hook
    (monai_uda_bundle_errors.pth) still turns a missing or malformed config file into one line naming it."""
    cfg = tmp_path / "configs" / "train.json"
    if case == "malformed":
        cfg.parent.mkdir()
        cfg.write_text('{\n  "a": 1,\n  b: 2\n}\n')
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(cfg)]
    env = {k: v for k, v in os.environ.items() if k != "MONAI_UDA_DEBUG"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln or "Traceback" in ln]
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(errors) == 1 and str(cfg) in errors[0] and errors[0].startswith("monai.bundle run: error: ")
    if case == "malformed":
        assert "is not valid JSON" in errors[0] and "line 3 column 3" in errors[0]


def test_startup_hook_only_for_the_bundle_command_line():
    from monai_uda.bundle.startup import _config_files, in_bundle_cli, json_error_file

    assert in_bundle_cli(["python", "-m", "monai.bundle", "run"])
    assert in_bundle_cli(["python", "-u", "-m", "monai.bundle", "run"])  # how torchrun starts its workers
    assert not in_bundle_cli(["python", "-m", "pytest"]) and not in_bundle_cli(["python", "x.py", "monai.bundle"])
    assert _config_files(["-m", "monai.bundle", "run", "--config_file", "['a.json','b.json']"]) == ["a.json", "b.json"]
    assert _config_files(["run", "--config_file=c.json"]) == ["c.json"]
    assert json_error_file(["run", "--config_file", "absent.json"]) is None  # absent: MONAI's own message says so


def test_installed_startup_line_is_the_packages():
    """The .pth in site-packages is the line of monai_uda/bundle/startup.py (setup.py writes it at install)."""
    import sysconfig
    from pathlib import Path

    from monai_uda.bundle.startup import PTH_LINE

    pth = Path(sysconfig.get_paths()["purelib"]) / "monai_uda_bundle_errors.pth"
    if not pth.is_file():
        pytest.skip("monai_uda is not pip-installed in this environment")
    assert pth.read_text() == PTH_LINE
