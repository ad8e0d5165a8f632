import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import budget_checks  # noqa: E402


def _per_image(path: Path, method: str, dice: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"pair": "A1", "method": method, "seed": s, "name": f"img{i}", "dice": dice[s, i]}
            for s in range(dice.shape[0]) for i in range(dice.shape[1])]
    pd.DataFrame(rows).to_csv(path, index=False)


def _row(table: str, name: str) -> str:
    return next(line for line in table.splitlines() if line.startswith(f"| {name} |"))


def test_budget_table_marks_a_budget_that_is_short_and_one_that_is_not(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    one = rng.uniform(0.3, 0.7, size=(3, 8))
    _per_image(tmp_path / "v2" / "A1" / "per_image.csv", "buda", one)
    _per_image(tmp_path / "budget" / "buda_rounds" / "per_image.csv", "buda", one + 0.1)  # 2x better everywhere
    flat = pd.read_csv(tmp_path / "v2" / "A1" / "per_image.csv").assign(method="st")
    flat.to_csv(tmp_path / "v2" / "A1" / "per_image.csv", mode="a", header=False, index=False)
    flat.assign(method="early").to_csv(tmp_path / "v2" / "A1" / "per_image.csv", mode="a", header=False, index=False)
    noise = rng.normal(0, 0.01, size=one.shape)
    _per_image(tmp_path / "budget" / "st_rounds" / "per_image.csv", "st", one + noise - noise.mean())
    table = budget_checks.budget_table(tmp_path)
    assert "more helps" in _row(table, "buda_rounds") and "+0.100" in _row(table, "buda_rounds")
    assert "no significant difference" in _row(table, "st_rounds")
    assert "not measured (2x not run yet)" in _row(table, "early_budget")
    assert "not measured (1x and 2x not run yet)" in _row(table, "selftrain_rounds")
    assert "not measured (1x and 2x not run yet)" in _row(table, "past_translator")


def test_run_reuses_the_v2_source_models_and_stages(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    for s in (0, 1, 2):
        (repo / "results" / "v2" / "A1" / f"seed{s}" / "source").mkdir(parents=True)
        (repo / "results" / "v2" / "A1" / f"seed{s}" / "source" / "model.pt").write_text("x")
        (repo / "results" / "v2" / "A1" / f"seed{s}" / "source" / "model.card.json").write_text("{}")  # finished
        (repo / "results" / "v2" / "A1" / f"seed{s}" / "s2d_common").mkdir(parents=True)
        (repo / "results" / "v2" / "A1" / f"seed{s}" / "s2d_common" / "facts.json").write_text("{}")
    monkeypatch.setattr(budget_checks, "REPO", repo)
    monkeypatch.setattr(budget_checks, "DOCS", repo / "docs")
    calls = []

    def fake_run(cmd, check, cwd):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        out.mkdir(parents=True, exist_ok=True)
        for f in ("results.csv", "results.md", "per_image.csv"):
            (out / f).write_text("x")

    monkeypatch.setattr(budget_checks.subprocess, "run", fake_run)
    checks = {c.name: c for c in budget_checks.CHECKS}
    budget_checks.run(checks["s2d_net"], "data", repo / "results" / "budget", threads=1)  # done (its 2x rows named)
    assert calls == []
    net = budget_checks.Check("s2d_net_x", "A1", "s2d", "", "", "", {"max_epochs": 24}, reuse=("s2d_common",),
                              needs_source=False)
    budget_checks.run(net, "data", repo / "results" / "budget", threads=1)
    budget_checks.run(checks["buda_rounds"], "data", repo / "results" / "budget", threads=1)
    s2d, buda = calls
    assert (repo / "results" / "budget" / "s2d_net_x" / "seed2" / "s2d_common" / "facts.json").is_file()
    assert (repo / "docs" / "budget" / "s2d_net_x" / "results.csv").is_file()  # the tables reach the docs
    assert "--source-from" not in s2d and "s2d:max_epochs=24" in s2d
    assert s2d[s2d.index("--methods") + 1] == "s2d" and s2d[s2d.index("--seeds") + 1:][:3] == ["0", "1", "2"]
    assert buda[buda.index("--source-from") + 1] == str(repo / "results" / "v2" / "A1")
    assert {"buda:num_rounds=6", "buda:max_epochs=24"} <= set(buda)
    assert (repo / "docs" / "budget" / "buda_rounds" / "per_image.csv").is_file()
    (repo / "results" / "v2" / "A1" / "seed1" / "source" / "model.card.json").unlink()  # unfinished: no 2x run
    with pytest.raises(SystemExit, match=r"st_rounds: no finished source model of seed\(s\) \[1\]"):
        budget_checks.run(checks["st_rounds"], "data", repo / "results" / "budget", threads=1)
    assert len(calls) == 2
    with pytest.raises(SystemExit, match="past_translator"):  # a stage the 1x run never made is named
        budget_checks.run(budget_checks.Check("past_translator", "D1", "past", "", "", "", {}, reuse=("x",)),
                          "data", repo / "results" / "budget", threads=1)


def test_a_check_whose_1x_budget_the_bundle_left_reads_its_own_1x_rows(tmp_path):
    rng = np.random.default_rng(1)
    old = rng.uniform(0.3, 0.5, size=(3, 8))
    # the pair's v2 rows now hold the new (2x) budget; the check's 1x rows are kept beside its 2x rows
    _per_image(tmp_path / "v2" / "A1" / "per_image.csv", "enhancer", old + 0.2)
    _per_image(tmp_path / "budget" / "s2d_enhancer" / "per_image_1x.csv", "enhancer", old)
    _per_image(tmp_path / "budget" / "s2d_enhancer" / "per_image.csv", "enhancer", old + 0.2)
    _per_image(tmp_path / "budget" / "s2d_enhancer_48" / "per_image_1x.csv", "enhancer", old + 0.1)
    _per_image(tmp_path / "budget" / "s2d_enhancer_48" / "per_image.csv", "enhancer", old + 0.2)
    table = budget_checks.budget_table(tmp_path)
    assert "+0.200" in _row(table, "s2d_enhancer") and "more helps" in _row(table, "s2d_enhancer")
    assert "+0.100" in _row(table, "s2d_enhancer_48")  # its own 1x rows, not the v2 rows (+0.200 away)
    # the validated enhancer's first check keeps its own 1x rows too (the v2 rows are at the 4x rule now)
    assert "not measured (1x and 2x not run yet)" in _row(table, "s2d_enhancer_val")
    _per_image(tmp_path / "budget" / "s2d_enhancer_val" / "per_image_1x.csv", "enhancer", old + 0.05)
    assert "not measured (2x not run yet)" in _row(budget_checks.budget_table(tmp_path), "s2d_enhancer_val")


def test_the_4x_check_of_the_validated_enhancer_reads_the_2x_rows_of_its_first_doubling_as_its_1x(tmp_path):
    rng = np.random.default_rng(2)
    v2 = rng.uniform(0.3, 0.5, size=(3, 8))
    _per_image(tmp_path / "v2" / "A1" / "per_image.csv", "enhancer", v2 + 0.5)  # the bundle's rule now: not read
    _per_image(tmp_path / "budget" / "s2d_enhancer_val" / "per_image_1x.csv", "enhancer", v2)
    _per_image(tmp_path / "budget" / "s2d_enhancer_val" / "per_image.csv", "enhancer", v2 + 0.1)
    table = budget_checks.budget_table(tmp_path)
    assert "+0.100" in _row(table, "s2d_enhancer_val")
    assert "not measured (2x not run yet)" in _row(table, "s2d_enhancer_val_4x")
    _per_image(tmp_path / "budget" / "s2d_enhancer_val_4x" / "per_image.csv", "enhancer", v2 + 0.13)
    table = budget_checks.budget_table(tmp_path)
    assert "+0.030" in _row(table, "s2d_enhancer_val_4x")  # against the doubled rule, not the v2 rows (+0.130)
    assert "not measured (2x not run yet)" in _row(table, "s2d_enhancer_val_8x")
    _per_image(tmp_path / "budget" / "s2d_enhancer_val_8x" / "per_image.csv", "enhancer", v2 + 0.12)
    table = budget_checks.budget_table(tmp_path)
    assert "-0.010" in _row(table, "s2d_enhancer_val_8x")  # against the 4x rows
    assert "not measured (2x not run yet)" in _row(table, "s2d_enhancer_val_16x")
    _per_image(tmp_path / "budget" / "s2d_enhancer_val_16x" / "per_image.csv", "enhancer", v2 + 0.15)
    assert "+0.030" in _row(budget_checks.budget_table(tmp_path), "s2d_enhancer_val_16x")  # against the 8x rows


def test_run_for_some_seeds_continues_from_the_committed_rows_and_reuses_finished_source_models(tmp_path, monkeypatch):
    from monai_uda.benchmarks.runner import source_model_path
    from monai_uda.bundle.stages import model_card_path

    docs, repo = tmp_path / "docs", tmp_path / "repo"
    monkeypatch.setattr(budget_checks, "DOCS", docs)
    monkeypatch.setattr(budget_checks, "REPO", repo)
    check = budget_checks.Check("past_translator", "D1", "past", "translator iterations", "12 × 20", "n/s",
                                {"translation_epochs": 24})
    committed = docs / "budget" / "past_translator"
    _per_image(committed / "per_image.csv", "past", np.full((1, 2), 0.5))  # seed 0, run on another machine
    pd.DataFrame([{"method": "past", "seed": 0, "dice": 0.5}]).to_csv(committed / "results.csv", index=False)
    one = repo / "results" / "v2" / "D1"
    for seed, card in ((1, True), (2, False)):  # seed 2's source training did not finish
        model = Path(source_model_path(str(one), seed))
        model.parent.mkdir(parents=True)
        model.touch()
        if card:
            Path(model_card_path(str(model))).touch()
    calls = []

    def fake_run(cmd, **kw):  # as the runner's --resume: the rows there are kept, the asked seeds' added
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        seeds = [int(x) for x in cmd[cmd.index("--seeds") + 1:cmd.index("--out")]]
        for f in ("results.csv", "per_image.csv"):
            rows = pd.read_csv(out / f) if (out / f).is_file() else pd.DataFrame()
            new = pd.DataFrame([{"method": "past", "seed": s, "name": "img0", "dice": 0.6} for s in seeds])
            pd.concat([rows, new], ignore_index=True).to_csv(out / f, index=False)
        (out / "results.md").write_text("table")

    monkeypatch.setattr(budget_checks.subprocess, "run", fake_run)
    out = tmp_path / "results"
    budget_checks.run(check, "data", out, threads=2, seeds=(1,))
    assert pd.read_csv(out / "past_translator" / "per_image.csv").seed.tolist() == [0, 0, 1]  # committed + run
    cmd = calls[0]
    assert cmd[cmd.index("--seeds") + 1:cmd.index("--out")] == ["1"]
    assert cmd[cmd.index("--source-from") + 1] == str(one)
    assert "--override" in cmd and "past:translation_epochs=24" in cmd
    assert sorted(set(pd.read_csv(committed / "results.csv").seed)) == [0, 1]
    # no finished source model: a retrained one would differ from the one the 1x rows used, so no run
    with pytest.raises(SystemExit, match=r"past_translator: no finished source model of seed\(s\) \[2\] in .*D1"):
        budget_checks.run(check, "data", out, threads=2, seeds=(2,))
    assert len(calls) == 1


def test_rows_committed_from_another_machine_survive_a_run_in_an_older_local_folder(tmp_path, monkeypatch):
    """This machine's folder holds seed 1 only, the docs seed 0 (made elsewhere): copying back kept both."""
    docs, repo = tmp_path / "docs", tmp_path / "repo"
    monkeypatch.setattr(budget_checks, "DOCS", docs)
    monkeypatch.setattr(budget_checks, "REPO", repo)
    check = budget_checks.Check("buda_rounds_x", "A1", "buda", "", "", "", {"num_rounds": 6}, needs_source=False)
    committed, local = docs / "budget" / check.name, tmp_path / "results" / check.name
    for folder, seed, dice in ((committed, 0, 0.5), (local, 1, 0.7), (committed, 1, 0.1)):  # seed 1: ours wins
        folder.mkdir(parents=True, exist_ok=True)
        for f in ("results.csv", "per_image.csv"):
            rows = pd.read_csv(folder / f) if (folder / f).is_file() else pd.DataFrame()
            new = pd.DataFrame([{"method": "buda", "seed": seed, "name": "img0", "dice": dice}])
            pd.concat([rows, new], ignore_index=True).to_csv(folder / f, index=False)

    def fake_run(cmd, **kw):  # the runner resumes: nothing to add for seed 1
        (local / "results.md").write_text("table")

    monkeypatch.setattr(budget_checks.subprocess, "run", fake_run)
    budget_checks.run(check, "data", tmp_path / "results", threads=1, seeds=(1,))
    for f in ("results.csv", "per_image.csv"):
        back = pd.read_csv(committed / f).sort_values("seed")
        assert back.seed.tolist() == [0, 1] and back.dice.tolist() == [0.5, 0.7], f


def test_mean_std_shows_no_spread_for_a_single_seed():
    assert budget_checks.mean_std(pd.Series([0.5821])) == "0.582"
    assert budget_checks.mean_std(pd.Series([0.5, 0.7])) == "0.600 ± 0.100"


def test_both_columns_cover_the_seeds_both_have(tmp_path):
    one = np.array([[0.5] * 6, [0.9] * 6, [0.9] * 6])  # seeds 1 and 2 of the 1x run are far better
    _per_image(tmp_path / "v2" / "A1" / "per_image.csv", "buda", one)
    _per_image(tmp_path / "budget" / "buda_rounds" / "per_image.csv", "buda", one[:1] + 0.01)  # 2x: seed 0 only
    row = _row(budget_checks.budget_table(tmp_path), "buda_rounds")
    assert "| 0.500 (1) | 0.510 (1) |" in row


def test_a_verdict_on_fewer_than_three_seeds_is_provisional(tmp_path):
    one = np.random.default_rng(1).uniform(0.3, 0.7, size=(3, 10))
    _per_image(tmp_path / "v2" / "A1" / "per_image.csv", "buda", one)
    _per_image(tmp_path / "budget" / "buda_rounds" / "per_image.csv", "buda", one[:1] + 0.1)  # 2x: seed 0 only
    row = _row(budget_checks.budget_table(tmp_path), "buda_rounds")
    assert "provisional, 1 of 3 seeds: more helps" in row
    _per_image(tmp_path / "budget" / "buda_rounds" / "per_image.csv", "buda", one + 0.1)  # all three seeds
    row = _row(budget_checks.budget_table(tmp_path), "buda_rounds")
    assert "more helps" in row and "provisional" not in row


def test_a_check_that_runs_its_own_1x_pairs_both_on_one_machines_source_models(tmp_path, monkeypatch):
    """``own``: the 1x run trains the source models and the 2x run starts from them; a seed whose models are not on
    this machine (its committed rows were made elsewhere) runs 1x and 2x anew, and both reach the docs."""
    from monai_uda.benchmarks.runner import source_model_path
    from monai_uda.bundle.stages import model_card_path

    docs, repo = tmp_path / "docs", tmp_path / "repo"
    monkeypatch.setattr(budget_checks, "DOCS", docs)
    monkeypatch.setattr(budget_checks, "REPO", repo)
    check = budget_checks.Check("past_rounds", "D1", "past", "", "", "", {"round_max_epochs": 24}, own=True)
    assert check.one_path(docs) == docs / "budget" / "past_rounds" / "per_image_1x.csv"
    committed = docs / "budget" / "past_rounds"
    for suffix in ("", "_1x"):  # seed 0, 1x and 2x, made on another machine
        _per_image(committed / f"per_image{suffix}.csv", "past", np.full((1, 2), 0.5))
        pd.DataFrame([{"method": "past", "seed": 0, "dice": 0.5}]).to_csv(committed / f"results{suffix}.csv",
                                                                           index=False)
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        seeds = [int(x) for x in cmd[cmd.index("--seeds") + 1:cmd.index("--out")]]
        for s in seeds:
            if "--source-from" not in cmd:  # the 1x run trains the source models
                model = Path(source_model_path(str(out), s))
                model.parent.mkdir(parents=True, exist_ok=True)
                model.touch()
                Path(model_card_path(str(model))).touch()
        for f in ("results.csv", "per_image.csv"):
            rows = pd.read_csv(out / f) if (out / f).is_file() else pd.DataFrame()
            done = set(rows.seed) if len(rows) else set()
            new = pd.DataFrame([{"method": "past", "seed": s, "name": "img0", "dice": 0.6} for s in seeds
                                if s not in done])
            pd.concat([rows, new], ignore_index=True).to_csv(out / f, index=False)
        (out / "results.md").write_text("table")

    monkeypatch.setattr(budget_checks.subprocess, "run", fake_run)
    out = tmp_path / "results"
    budget_checks.run(check, "data", out, threads=2, seeds=(0,))
    one, two = calls
    assert Path(one[one.index("--out") + 1]) == out / "past_rounds" / "1x" and "--override" not in one
    assert Path(two[two.index("--source-from") + 1]) == out / "past_rounds" / "1x"
    assert "past:round_max_epochs=24" in two
    for suffix in ("", "_1x"):  # seed 0's rows from elsewhere were made again here, 1x and 2x alike
        assert pd.read_csv(committed / f"per_image{suffix}.csv").dice.tolist() == [0.6]
        assert (committed / f"results{suffix}.md").is_file()


def test_forgotten_seeds_leave_every_file_that_resume_reads(tmp_path):
    """A seed's rows go from the tables and from a stopped run's partial files alike, or ``--resume`` would keep them."""
    from monai_uda.benchmarks.runner import PARTIAL_DIR, _previous_rows

    for folder in (tmp_path, tmp_path / PARTIAL_DIR):
        _per_image(folder / "per_image.csv", "past", np.full((2, 2), 0.5))
        pd.DataFrame([{"method": "past", "seed": s, "dice": 0.5} for s in (0, 1)]).to_csv(folder / "results.csv",
                                                                                         index=False)
    budget_checks._forget_seeds(tmp_path, [1])
    rows, images = _previous_rows(str(tmp_path))
    assert set(rows) == {("past", 0)} and set(images.seed) == {0}
