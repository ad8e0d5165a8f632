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
