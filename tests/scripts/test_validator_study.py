import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import validator_study  # noqa: E402


def _write(root: Path, seed: int, scores: dict, chosen: str) -> None:
    """im ranks like ``scores``, mixval the reverse (their ranks cancel in the default rule's mean), and
    foreground_fraction is highest for ``chosen``, so the default rule picks ``chosen``."""
    d = root / "selection" / "A1" / f"seed{seed}"
    d.mkdir(parents=True)
    pd.DataFrame([{"candidate": c, "im": v, "mixval": -v, "foreground_fraction": float(c == chosen),
                   "rule_score": v, "chosen": c == chosen} for c, v in scores.items()]).to_csv(d / "selection.csv",
                                                                                             index=False)


def test_correlation_and_regret_against_the_true_dice(tmp_path):
    true = {"source": 0.50, "bn": 0.60, "st": 0.40, "selftrain": 0.70}
    v2 = tmp_path / "v2" / "A1"
    v2.mkdir(parents=True)
    pd.DataFrame([{"method": m, "seed": s, "dice": d + 0.01 * s} for m, d in true.items() for s in (0, 1)]).to_csv(
        v2 / "results.csv", index=False)
    _write(tmp_path, 0, {m: d for m, d in true.items()}, chosen="selftrain")  # im ranks exactly like the truth
    _write(tmp_path, 1, {m: d + 0.01 for m, d in true.items()}, chosen="st")  # a bad pick: 10 points below source
    data = validator_study.load(tmp_path)
    corr = validator_study.correlation_table(data)
    assert "| `im` | +1.00" in corr and "| `mixval` | -1.00" in corr
    row = next(x for x in validator_study.regret_table(data).splitlines() if x.startswith("| A1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "selftrain, st"
    assert cells[3] == "15.0"  # (0 + 30) / 2 points
    assert cells[4] == "1"  # seed 1's pick is more than 2 points below source
    assert cells[5] == "20.0" and cells[6] == "10.0"  # always source, always bn


def test_regret_without_the_weakly_supervised_candidates_reranks_the_rest(tmp_path):
    """Left out, s2d is neither a pick nor the best; the rule ranks the remaining candidates among themselves."""
    true = {"source": 0.50, "bn": 0.60, "s2d": 0.90, "selftrain": 0.70}
    v2 = tmp_path / "v2" / "A1"
    v2.mkdir(parents=True)
    pd.DataFrame([{"method": m, "seed": 0, "dice": d} for m, d in true.items()]).to_csv(v2 / "results.csv",
                                                                                     index=False)
    _write(tmp_path, 0, {m: d for m, d in true.items()}, chosen="s2d")
    f = tmp_path / "selection" / "A1" / "seed0" / "selection.csv"
    t = pd.read_csv(f)
    t.loc[t.candidate == "selftrain", "foreground_fraction"] = 0.5  # second to s2d's 1.0
    t.to_csv(f, index=False)
    data = validator_study.load(tmp_path)
    def row(table: str) -> list[str]:
        return [c.strip() for c in next(x for x in table.splitlines() if x.startswith("| A1 |")).strip("|").split("|")]

    assert row(validator_study.regret_table(data))[2:4] == ["s2d", "0.0"]
    cells = row(validator_study.regret_table(data, exclude=tuple(validator_study.WEAKLY_SUPERVISED)))
    assert cells[2:4] == ["selftrain", "0.0"] and cells[5] == "20.0"  # best of the rest: selftrain, 0.70


def test_pairwise_verdict_counts_right_and_wrong_calls_and_what_following_it_gives(tmp_path):
    true = {"source": 0.50, "bn": 0.60, "st": 0.40, "selftrain": 0.70, "cbst": 0.30, "early": 0.50, "bn_source": 0.9}
    # (im, mixval, foreground_fraction); rule_score: the all-candidate mean rank, which the two-model verdict ignores
    scores = {"source": (0.5, 0.5, 0.5, 0.0), "bn": (0.6, 0.6, 0.4, 0.1),  # wins 2 of 3 columns: adapted, right
              "st": (0.6, 0.4, 0.4, 0.2),  # wins 1 of 3: source, right
              "selftrain": (0.9, 0.4, 0.4, 0.9),  # wins 1 of 3: source, wrong (20 points lost)
              "cbst": (0.6, 0.6, 0.6, 0.3),  # wins 3 of 3: adapted, wrong (20 points worse)
              "early": (0.5, 0.5, 0.5, 0.4),  # a tie keeps the source model; gain 0: right
              "bn_source": (0.9, 0.9, 0.9, 1.0),  # a control: no bundle verdict, not counted
              "buda": (0.9, 0.9, 0.9, 1.0)}  # no true Dice: not counted
    v2 = tmp_path / "v2" / "A1"
    v2.mkdir(parents=True)
    pd.DataFrame([{"method": m, "seed": s, "dice": d} for m, d in true.items() for s in (0, 1)]).to_csv(
        v2 / "results.csv", index=False)
    for seed, names in ((0, list(scores)), (1, ["bn", "st"])):  # seed 1 has no source row: not counted
        d = tmp_path / "selection" / "A1" / f"seed{seed}"
        d.mkdir(parents=True)
        pd.DataFrame([{"candidate": c, "im": scores[c][0], "mixval": scores[c][1], "foreground_fraction": scores[c][2],
                       "rule_score": scores[c][3], "chosen": False} for c in names]).to_csv(d / "selection.csv",
                                                                                          index=False)
    row = next(x for x in validator_study.pairwise_table(validator_study.load(tmp_path)).splitlines()
               if x.startswith("| A1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:] == ["im, mixval, foreground_fraction", "5", "3 (60 %)", "2 (40 %)", "1", "1", "-2.0 pts",
                         "+0.0 pts"]  # follow: (10 + 0 + 0 - 20 + 0) / 5 points; always: (10 - 10 + 20 - 20 + 0) / 5


def _opposite_pairs(root, seeds=(0,)):
    """im tracks the truth on A1 and mixval on B2 (each the reverse on the other pair), in every seed."""
    true = {"source": 0.50, "bn": 0.60, "st": 0.40, "selftrain": 0.70}
    for pair, sign in (("A1", 1.0), ("B2", -1.0)):
        v2 = root / "v2" / pair
        v2.mkdir(parents=True)
        pd.DataFrame([{"method": m, "seed": s, "dice": d} for m, d in true.items() for s in seeds]).to_csv(
            v2 / "results.csv", index=False)
        for seed in seeds:
            d = root / "selection" / pair / f"seed{seed}"
            d.mkdir(parents=True)
            pd.DataFrame([{"candidate": m, "im": sign * v, "mixval": -sign * v, "chosen": False}
                          for m, v in true.items()]).to_csv(d / "selection.csv", index=False)
    return validator_study.load(root)


def test_a_rule_chosen_on_the_other_pairs_is_scored_on_the_held_out_pair(tmp_path):
    """Leaving A1 out chooses mixval, which picks A1's worst candidate; the default rule's two columns cancel and
    keep the source model. One seed a pair: too few runs for the paired test under the table."""
    data = _opposite_pairs(tmp_path)
    assert set(validator_study.candidate_rules(data)) == {"default", "im", "mixval", "im+mixval"}
    rows = {x.split("|")[1].strip(): [c.strip() for c in x.strip("|").split("|")]
            for x in validator_study.held_out_table(data).splitlines()[2:] if x.startswith("|")}
    assert rows["A1"][1:6] == ["`mixval`", "0.0", "30.0", "1", "st"]  # chosen on B2 (0 regret there)
    assert rows["B2"][1:6] == ["`im`", "0.0", "30.0", "1", "st"]
    assert rows["A1"][6] == rows["B2"][6] == "20.0"  # the default rule keeps the source model
    assert rows["mean"][3] == "30.0" and rows["mean"][6] == "20.0"
    assert "Wilcoxon" not in validator_study.held_out_table(data)


def test_the_held_out_rules_are_tested_against_the_default_rule_over_pair_and_seed(tmp_path):
    """As above over three seeds: on each held-out (pair, seed) the chosen rule loses 30 points and the default 20,
    so the sentence under the table counts 6 of 6 runs higher and the paired test says so."""
    text = validator_study.held_out_table(_opposite_pairs(tmp_path, seeds=(0, 1, 2)))
    line = text.strip().splitlines()[-1]
    assert "+10.0 points on average, lower in 0 and higher in 6 of 6 runs" in line
    assert float(line.rsplit(" p ", 1)[1].rstrip(".")) < 0.05


def test_a_row_superseded_twice_reads_the_dice_of_its_first_version(tmp_path):
    """The selection tables scored the model of a row's first version; stale_rows.py --drop appends each rerun's
    predecessor, so the archive can hold two versions of one (method, seed)."""
    v2 = tmp_path / "v2" / "A1"
    v2.mkdir(parents=True)
    pd.DataFrame([{"method": "source", "seed": 0, "dice": 0.5}, {"method": "s2d", "seed": 0, "dice": 0.9}]).to_csv(
        v2 / "results.csv", index=False)
    pd.DataFrame([{"method": "s2d", "seed": 0, "dice": 0.6}, {"method": "s2d", "seed": 0, "dice": 0.7}]).to_csv(
        v2 / "superseded_results.csv", index=False)
    _write(tmp_path, 0, {"source": 0.5, "s2d": 0.6}, chosen="s2d")
    df = validator_study.load(tmp_path)["A1"].set_index("candidate")
    assert df.loc["s2d", "dice"] == 0.6 and df.loc["source", "dice"] == 0.5
    # once the table's s2d row is scored again on the rerun model (selection_rescore.py), it pairs with today's Dice
    import json

    (tmp_path / "selection" / "A1" / "seed0" / "selection.json").write_text(json.dumps({"rescored": {"s2d": {}}}))
    df = validator_study.load(tmp_path)["A1"].set_index("candidate")
    assert df.loc["s2d", "dice"] == 0.9 and df.loc["source", "dice"] == 0.5
