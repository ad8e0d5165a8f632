import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import selection_rescore  # noqa: E402

from monai_uda.utils import file_hash  # noqa: E402

pytestmark = pytest.mark.usefixtures("cli_process_state")  # tests/conftest.py


def test_a_rescored_candidate_gets_the_scores_it_gets_alone_and_the_pick_follows(
        tiny_demo_2d, demo_models, no_target_labels, tmp_path, capsys):
    from monai_uda.cli import main

    out = tmp_path / "sel"
    # "zero" (every weight zero) is one of the candidates; then its model is replaced by the good one, as a rerun
    validators = ["--validators", "entropy,im,source_agreement,consensus,mixval,foreground_fraction,component_sizes",
                  "w2_shift"]
    assert main(["select", "--datalist", tiny_demo_2d, "--checkpoints", demo_models["zero"], demo_models["broken"],
                 "--source", demo_models["broken"], "--out", str(out), *validators]) == 0
    capsys.readouterr()
    before = pd.read_csv(out / "selection.csv", index_col="candidate")
    rerun = tmp_path / "rerun" / "zero.pt"
    rerun.parent.mkdir()
    rerun.write_bytes(Path(demo_models["good"]).read_bytes())
    new = selection_rescore.rescore(out, tiny_demo_2d, {"zero": str(rerun)}, progress=False)

    # the reference: "good" scored by select beside the same source model
    ref_dir = tmp_path / "ref"
    assert main(["select", "--datalist", tiny_demo_2d, "--checkpoints", demo_models["good"], demo_models["zero"],
                 "--source", demo_models["broken"], "--out", str(ref_dir), *validators]) == 0
    ref = pd.read_csv(ref_dir / "selection.csv", index_col="candidate")
    for c in ("entropy", "im", "mixval", "foreground_fraction", "component_sizes", "w2_shift"):
        assert new.loc["zero", c] == pytest.approx(ref.loc["good", c], rel=1e-5, abs=1e-7), c
        assert new.loc["source", c] == before.loc["source", c]  # the other rows are kept as they were
    assert math.isnan(new.loc["zero", "source_agreement"]) and math.isnan(new.loc["zero", "consensus"])
    assert new.loc["zero", "chosen"] and not before.loc["zero", "chosen"]  # the better model now wins the rule
    assert new.loc["zero", "checkpoint"] == str(rerun.resolve())
    record = json.loads((out / "selection.json").read_text())
    assert record["chosen"] == "zero" and record["checkpoint"] == str(rerun.resolve())
    assert record["rescored"]["zero"]["emptied"] == ["source_agreement", "consensus"]
    assert record["rescored"]["zero"]["sha256"] == file_hash(rerun)
    assert record["scores"]["zero"]["im"] == pytest.approx(ref.loc["good", "im"], rel=1e-5)



def test_the_whole_table_scored_again_equals_a_fresh_select_on_the_same_models(
        tiny_demo_2d, demo_models, no_target_labels, tmp_path, capsys):
    from monai_uda.cli import main

    out = tmp_path / "sel"
    validators = ["--validators", "entropy,im,source_agreement,consensus,mixval,foreground_fraction,component_sizes",
                  "w2_shift"]
    assert main(["select", "--datalist", tiny_demo_2d, "--checkpoints", demo_models["zero"], "--source",
                 demo_models["broken"], "--out", str(out), *validators]) == 0
    rerun = tmp_path / "rerun" / "zero.pt"  # the rerun model, under the candidate's name
    rerun.parent.mkdir()
    rerun.write_bytes(Path(demo_models["good"]).read_bytes())
    with pytest.raises(SystemExit, match=r"selection.csv: scoring the whole table needs every candidate's model; "
                                         r"none for source"):
        selection_rescore.rescore(out, tiny_demo_2d, {"zero": str(rerun)}, progress=False, whole=True)
    new = selection_rescore.rescore(out, tiny_demo_2d, {"source": demo_models["broken"], "zero": str(rerun)},
                                    progress=False, whole=True)
    ref_dir = tmp_path / "ref"  # select on today's models: the reference of every column, the two-model ones too
    assert main(["select", "--datalist", tiny_demo_2d, "--checkpoints", str(rerun), "--source",
                 demo_models["broken"], "--out", str(ref_dir), *validators]) == 0
    ref = pd.read_csv(ref_dir / "selection.csv", index_col="candidate")
    for c in ("entropy", "im", "source_agreement", "consensus", "mixval", "foreground_fraction", "component_sizes",
              "w2_shift", "rule_score"):
        for name in ("source", "zero"):
            assert new.loc[name, c] == pytest.approx(ref.loc[name, c], rel=1e-5, abs=1e-7), (name, c)
    assert new.loc["zero", "chosen"] and ref.loc["zero", "chosen"]
    record = json.loads((out / "selection.json").read_text())
    assert sorted(record["rescored"]) == ["source", "zero"]
    assert all(r["emptied"] == [] for r in record["rescored"].values())

def test_an_unknown_candidate_is_refused_naming_the_table(tiny_demo_2d, demo_models, no_target_labels, tmp_path,
                                                          capsys):
    from monai_uda.cli import main

    out = tmp_path / "sel"
    assert main(["select", "--datalist", tiny_demo_2d, "--checkpoints", demo_models["zero"], "--source",
                 demo_models["broken"], "--out", str(out), "--validators", "im"]) == 0
    with pytest.raises(SystemExit, match=r"selection.csv: no candidate s2d to rescore \(it has source, zero\)"):
        selection_rescore.rescore(out, tiny_demo_2d, {"s2d": demo_models["good"]}, progress=False)
    with pytest.raises(SystemExit, match=r"nowhere/selection.csv not found"):
        selection_rescore.rescore(tmp_path / "nowhere", tiny_demo_2d, {}, progress=False)


def test_a_table_whose_rule_uses_an_emptied_column_is_refused(tiny_demo_2d, demo_models, no_target_labels, tmp_path,
                                                              capsys):
    from monai_uda.cli import main

    out = tmp_path / "sel"
    assert main(["select", "--datalist", tiny_demo_2d, "--checkpoints", demo_models["zero"], "--source",
                 demo_models["broken"], "--out", str(out), "--validators", "im,consensus", "--rule", "im,consensus"]) == 0
    before = (out / "selection.csv").read_text()
    with pytest.raises(SystemExit, match=r"selection.json: its rule uses consensus, which a candidate scored alone"):
        selection_rescore.rescore(out, tiny_demo_2d, {"zero": demo_models["good"]}, progress=False)
    assert (out / "selection.csv").read_text() == before  # nothing written


def test_a_table_folder_not_named_seed_k_needs_the_seed(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["selection_rescore.py", str(tmp_path / "A1"), "--datalist", "x.json",
                                      "--bench", str(tmp_path), "--whole"])
    with pytest.raises(SystemExit, match=r"A1: its name is not seed<k>; give the seed with --seed"):
        selection_rescore.main()
