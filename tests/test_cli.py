"""The ``monai-uda`` command line (fast paths; the demo/benchmark runs are covered in tests/benchmarks)."""

from __future__ import annotations

import json
import math
import os

import pytest

from monai_uda.cli import main


pytestmark = pytest.mark.usefixtures("cli_process_state")  # tests/conftest.py


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
    seeds = sorted(set(df.seed))
    assert seeds == [0, 1, 2]  # the benchmark's default seeds (protocol v2)
    assert list(df.method) == ["source", "oracle"] * len(seeds) and set(df.pair) == {pair}
    for col in ("dice", "iou", "surface_dice"):
        assert df[col].between(0.0, 1.0).all(), df[col]
    src, orc = (float(df.loc[df.method == m, "dice"].iloc[0]) for m in ("source", "oracle"))
    gap = df.loc[df.method == "oracle", "gap_closed"].iloc[0]
    assert gap == 1.0 if orc > src + 1e-8 else math.isnan(gap)  # (oracle - source) / (oracle - source)
    assert f"| source |" in capsys.readouterr().out  # the printed summary table


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_garbage_checkpoint_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "garbage.pt"
    bad.write_bytes(b"not a checkpoint at all")
    code = main(["shift", "--model", str(bad), "--source", str(tmp_path), "--target", str(tmp_path)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "garbage.pt is not a PyTorch state dict" in line and "weights_only" not in line


def test_checkpoint_of_another_architecture_is_one_line(tmp_path, capsys):
    import torch

    from monai_uda.networks import UDAUNet

    path = tmp_path / "3d.pt"
    torch.save(UDAUNet(3, 1, 2).state_dict(), path)
    code = main(["shift", "--model", str(path), "--spatial-dims", "2", "--source", str(tmp_path),
                 "--target", str(tmp_path)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "3d.pt does not fit UDAUNet" in line
    assert "conv_0.conv_0.conv.weight is [16, 1, 3, 3, 3] in the checkpoint, [16, 1, 3, 3] in this network" in line


def test_second_benchmark_into_the_same_folder_is_refused(tiny_demo_2d, tmp_path, capsys):
    from monai_uda.utils import folder_lock

    with folder_lock(tmp_path):  # a run in progress
        code = main(["benchmark", "--datalist", tiny_demo_2d, "--methods", "source", "--quick", "--out", str(tmp_path)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "is being written by another monai-uda run" in line
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "seed0").exists()


def test_unwritable_output_folder_is_one_line(tiny_demo_2d, tmp_path, capsys, monkeypatch):
    from monai_uda.benchmarks import runner

    def read_only(folder):  # what os.open/makedirs raise in a folder the user may not write (CI runs as root)
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(runner, "folder_lock", read_only)
    out = tmp_path / "ro"
    code = main(["benchmark", "--datalist", tiny_demo_2d, "--methods", "source", "--quick", "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and f"no permission to write {out}: choose a writable --out folder" in line


def test_misspelt_datalist_key_through_validate(tiny_demo_2d, tmp_path, capsys):
    dl = json.loads(open(tiny_demo_2d).read())
    dl["spatal_dims"] = dl.pop("spatial_dims")
    p = tmp_path / "typo.json"
    p.write_text(json.dumps(dl))
    code = main(["validate", str(p), "--dataset-dir", os.path.dirname(tiny_demo_2d)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "typo.json" in line and "'spatal_dims'; did you mean 'spatial_dims'?" in line


@pytest.mark.parametrize("cmd", ["demo", "datalist", "validate", "benchmark", "report", "shift", "infer"])
def test_every_subcommand_help_explains_its_options_with_an_example(cmd, capsys):
    import argparse

    from monai_uda.cli import build_parser

    with pytest.raises(SystemExit):
        main([cmd, "--help"])
    out = capsys.readouterr().out
    assert f"example: monai-uda {cmd}" in out
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[cmd]
    for action in sub._actions:
        assert action.help, f"{cmd} {action.option_strings or action.dest} has no help text"
        if action.option_strings and action.help != argparse.SUPPRESS and "-h" not in action.option_strings:
            assert "(default:" in sub.format_help().split(action.option_strings[-1], 1)[1], action.dest


def _model(path, classes=2):
    import torch

    from monai_uda.networks import UDAUNet

    torch.manual_seed(0)
    torch.save(UDAUNet(2, 1, classes).state_dict(), path)
    return str(path)


def test_infer_png_in_png_out_and_says_where(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    (tmp_path / "in").mkdir()
    for name in ("a", "b"):
        Image.fromarray((np.random.default_rng(0).random((40, 56)) * 255).astype(np.uint8)).save(tmp_path / "in" / f"{name}.png")
    out = tmp_path / "seg"
    assert main(["infer", "--model", _model(tmp_path / "m.pt"), "--input", str(tmp_path / "in"), "--out", str(out),
                 "--roi-size", "32"]) == 0
    stdout = capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["a_seg.png", "b_seg.png"]
    seg = np.asarray(Image.open(out / "a_seg.png"))
    assert seg.shape == (40, 56) and set(np.unique(seg)) <= {0, 1}
    where = [ln for ln in stdout.splitlines() if ln.startswith("inference: wrote")]
    assert len(where) == 1 and f"2 of 2 outputs to {out}" in where[0] and "a_seg.png" in where[0], stdout
    assert stdout.splitlines()[0].startswith("threads: torch ")  # the thread line comes first


def test_infer_nifti_in_nifti_out(tmp_path, tiny_demo_2d, capsys):
    image = json.loads(open(tiny_demo_2d).read())["target_test"][0]["image"]
    image = image if os.path.isabs(image) else os.path.join(os.path.dirname(tiny_demo_2d), image)
    out = tmp_path / "seg"
    assert main(["infer", "--model", _model(tmp_path / "m.pt"), "--input", image, "--out", str(out)]) == 0
    name = os.path.basename(image)[: -len(".nii.gz")]
    assert os.listdir(out) == [f"{name}_seg.nii.gz"]
    assert f"1 of 1 outputs to {out}" in capsys.readouterr().out


def test_infer_missing_input_and_wrong_classes_are_one_line(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    code = main(["infer", "--model", _model(tmp_path / "m.pt"), "--input", str(tmp_path / "nope.png")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "no images found for" in line and "nope.png" in line
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    code = main(["infer", "--model", _model(tmp_path / "m3.pt", classes=3), "--input", str(tmp_path / "x.png"),
                 "--num-classes", "2", "--out", str(tmp_path / "seg")])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "m3.pt does not fit UDAUNet" in line
    assert not (tmp_path / "seg").exists()


def test_threads_option_is_used_and_printed_first(tmp_path, capsys):
    import torch

    code = main(["shift", "--threads", "1", "--model", str(tmp_path / "none.pt"), "--source", str(tmp_path),
                 "--target", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 2 and out.splitlines()[0] == "threads: torch 1 (--threads), data-loader workers 0"
    assert torch.get_num_threads() == 1



def test_override_of_an_unknown_key_or_a_zero_budget_is_refused_before_any_run(tiny_demo_2d, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["benchmark", "--datalist", tiny_demo_2d, "--methods", "source", "--quick", "--out", str(out),
                 "--override", "source:max_epoch=2"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "source:max_epoch=2: no bundle config has the key 'max_epoch'; did you mean 'max_epochs'?" in line
    code = main(["benchmark", "--datalist", tiny_demo_2d, "--methods", "source", "--quick", "--out", str(out),
                 "--override", "source:max_epochs=0"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "max_epochs must be a positive integer" in line
    assert not out.exists()


def test_override_may_add_an_argument_to_an_existing_component():
    """``network_def#features`` is not in any config but ``network_def`` is: a constructor argument, accepted;
    a misspelt component is still refused."""
    from monai_uda.cli import _check_override, _config_ids

    ids = _config_ids()
    _check_override("source", "network_def#features", [8, 8, 16, 32, 64, 8], ids)
    with pytest.raises(ValueError, match="netwrk_def#features"):
        _check_override("source", "netwrk_def#features", [8], ids)


def test_an_error_under_a_progress_bar_gets_its_own_line(monkeypatch, capsys):
    from tqdm import tqdm

    from monai_uda import cli

    def fails(a):
        bar = tqdm(range(3), desc="benchmark demo")
        next(iter(bar))
        raise ValueError("datalist x.json: something named")

    monkeypatch.setattr(cli, "cmd_validate", fails)
    assert main(["validate", "x.json"]) == 2
    last = capsys.readouterr().err.rstrip("\n").split("\n")[-1]
    assert last.startswith("monai-uda validate: error: datalist x.json: something named"), last


def test_default_benchmark_output_is_one_bar_and_one_line_per_row(tiny_demo_2d, tmp_path, capfd, caplog,
                                                                   monkeypatch):
    """No inner progress bar (BN re-estimation, shallow-to-deep loading/forests/pseudo-labels), no engine INFO
    log; the simulated-user notice once (a logged warning: once per process). -v would show the inner bars."""
    import monai_uda.methods.shallow2deep.workflow as s2d_workflow

    monkeypatch.setattr(s2d_workflow, "_WARNED", set())
    out = tmp_path / "out"
    code = main(["benchmark", "--datalist", tiny_demo_2d, "--methods", "source,bn,rf", "--quick", "--seeds", "0",
                 "--out", str(out), "--threads", "1", "--override", "rf:n_forests=2", "--override", "rf:forest_trees=2"])
    text = capfd.readouterr()
    both = (text.out + text.err).replace("\r", "\n")
    assert code == 0
    for inner in ("BN re-estimation", "source forests", "pseudo-labels", "load source_training", "load oracle_training",
                  "No workflow type", " - INFO - "):
        assert inner not in both, inner
    assert sum("SIMULATED USER" in r.getMessage() for r in caplog.records) == 1
    rows = [ln for ln in both.splitlines() if ln.strip().startswith(("demo source seed 0:", "demo bn seed 0:",
                                                                    "demo rf seed 0:"))]
    assert len(rows) == 3
    # the details are in the run's log file: engine logs and the notice
    log = (out / "monai_uda.log").read_text()
    assert "ignite.engine" in log and " INFO: " in log and "SIMULATED USER" in log
    assert f"details: {out / 'monai_uda.log'}" in text.out
