"""``monai-uda select`` on the embedded demo pair: it picks the working checkpoint over broken ones, keeps the source
model when nothing beats it, and never opens a target label."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
import torch

from monai_uda.cli import main


pytestmark = pytest.mark.usefixtures("cli_process_state")  # tests/conftest.py


def _line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if "scoring candidates" not in ln]
    assert len(lines) == 1, err
    return lines[0]


def test_select_picks_the_working_checkpoint_and_writes_a_bundle_without_opening_a_target_label(
        tiny_demo_2d, demo_models, no_target_labels, tmp_path, capsys):
    opened, targets = no_target_labels
    out, bundle = tmp_path / "selection", tmp_path / "bundle"
    code = main(["select", "--datalist", tiny_demo_2d, "--checkpoints", demo_models["good"], demo_models["zero"],
                 "--source", demo_models["broken"], "--out", str(out), "--write-bundle", str(bundle)])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert targets <= set(opened)  # the target images were read through the guarded readers
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"selected: good ({demo_models['good']}): 'good' has the best mean rank"), last
    assert "above the source model's" in last

    table = pd.read_csv(out / "selection.csv", index_col="candidate")
    assert list(table.index) == ["source", "good", "zero"] and table["chosen"].tolist() == [False, True, False]
    for column in ("entropy", "im", "source_agreement", "consensus", "mixval", "foreground_fraction",
                   "component_sizes", "rule_score", "inference_seconds"):
        assert column in table, column
    assert "w2_shift" not in table  # on request only: it costs a forward pass per image
    assert table.loc["good", "im"] > table.loc["source", "im"] and table.loc["good", "mixval"] > 0
    assert (out / "selection.png").stat().st_size > 1000
    assert json.loads((out / "selection.json").read_text())["chosen"] == "good"

    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    record = meta["uda_selection"]
    assert record["chosen"] == "good" and record["checkpoint"] == os.path.abspath(demo_models["good"])
    assert set(record["scores"]) == {"source", "good", "zero"} and "mixval" in record["scores"]["good"]
    assert record["rule_columns"] == ["im", "mixval", "foreground_fraction", "component_sizes"]
    weights = torch.load(bundle / "models" / "model.pt", weights_only=True)
    good = torch.load(demo_models["good"], weights_only=True)
    assert all(torch.equal(weights[k], good[k]) for k in good)
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert inference["bundle_root"] == str(bundle.resolve()) and inference["num_classes"] == 2
    assert (bundle / "LICENSE").is_file() and (bundle / "configs" / "train.json").is_file()


def test_keep_the_source_model_when_no_candidate_beats_it(tiny_demo_2d, demo_models, no_target_labels, tmp_path,
                                                          capsys):
    code = main(["select", "--datalist", tiny_demo_2d, "--checkpoints", demo_models["broken"], demo_models["zero"],
                 "--source", demo_models["good"], "--out", str(tmp_path), "--validators", "im,mixval", "entropy",
                 "w2_shift"])
    stdout = capsys.readouterr().out
    assert code == 0
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(f"selected: source ({demo_models['good']}): keep the source model: no candidate ranks above "
                           "it over im, mixval"), last
    table = pd.read_csv(tmp_path / "selection.csv", index_col="candidate")
    assert [c for c in table.columns if c in ("entropy", "im", "mixval", "w2_shift", "consensus")] == [
        "im", "mixval", "entropy", "w2_shift"]  # as asked; w2_shift found in monai_uda.methods.bn_reestimation
    assert table["w2_shift"].le(0).all() and table.loc["source", "w2_shift"] < 0


def test_a_benchmark_folder_skips_the_oracle_and_network_def_methods(tiny_demo_2d, demo_models, no_target_labels,
                                                                     tmp_path, capsys):
    import shutil

    bench = tmp_path / "bench"
    rows = [("source", 0), ("oracle", 0), ("bn", 0), ("st", 0), ("rf", 0)]
    for method, file in (("source", "broken"), ("oracle", "good"), ("bn", "good"), ("st", "zero")):
        os.makedirs(bench / "seed0" / method)
        shutil.copy(demo_models[file], bench / "seed0" / method / "model.pt")
    pd.DataFrame(rows, columns=["method", "seed"]).to_csv(bench / "results.csv", index=False)
    code = main(["select", "--datalist", tiny_demo_2d, "--bench", str(bench), "--out", str(tmp_path / "out"),
                 "--rule", "im,mixval", "--limit", "2"])
    stdout = capsys.readouterr().out
    assert code == 0, stdout
    assert "monai-uda select: skipped 2: oracle (trained on target labels" in stdout and "rf (" in stdout
    assert "3 models (source, bn, st)" in stdout and "2 target_training image(s)" in stdout
    assert stdout.strip().splitlines()[-1].startswith(f"selected: bn ({bench / 'seed0' / 'bn' / 'model.pt'})")


@pytest.mark.parametrize("args, names", [
    (["--checkpoints", "MISSING.pt", "--source", "{good}"], "checkpoint not found: MISSING.pt"),
    (["--checkpoints", "{good}"], "--checkpoints needs --source"),
    (["--bench", "{tmp}"], "results.csv not found"),
    (["--checkpoints", "{good}", "--source", "{good}", "--validators", "nope"], "unknown validator 'nope'"),
    (["--checkpoints", "{garbage}", "--source", "{good}"], "garbage.pt is not a PyTorch state dict"),
    (["--checkpoints", "{zero}", "--source", "{good}", "--validators", "entropy", "--rule", "im"],
     "--rule im: im not among the validators run (entropy)"),
])
def test_bad_input_is_one_line_naming_the_file_or_key(tiny_demo_2d, demo_models, tmp_path, capsys, args, names):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"junk")
    args = [a.format(good=demo_models["good"], zero=demo_models["zero"], tmp=tmp_path, garbage=garbage) for a in args]
    code = main(["select", "--datalist", tiny_demo_2d, "--out", str(tmp_path / "out"), *args])
    line = _line(capsys.readouterr().err)
    assert code == 2 and line.startswith("monai-uda select: error:") and names in line, line
    assert not (tmp_path / "out" / "selection.csv").exists()


def test_help_explains_every_option_with_an_example(capsys):
    import argparse

    from monai_uda.cli import build_parser

    with pytest.raises(SystemExit):
        main(["select", "--help"])
    assert "example: monai-uda select" in capsys.readouterr().out
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices["select"]
    for action in sub._actions:
        assert action.help, action.dest
        if action.option_strings and "-h" not in action.option_strings:
            assert "(default:" in sub.format_help().split(action.option_strings[-1], 1)[1], action.dest
