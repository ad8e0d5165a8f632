"""How well the label-free validators track the true target Dice (docs/selection.md, "Measured").

For each pair with selection tables (``monai-uda select --bench results/v2/<pair> --seed <k> --out
results/selection/<pair>/seed<k>``, copied to ``docs/benchmarks/selection/<pair>/seed<k>/selection.csv``) and v2
rows (``docs/benchmarks/v2/<pair>/results.csv``: the true target-test Dice of every (method, seed); for a row rerun
since the selection tables were made, the Dice of the model they scored, from ``superseded_results.csv``, where
``scripts/stale_rows.py --drop`` keeps the rows it drops):

- per validator, the Spearman rank correlation between its score and the true Dice over all (method, seed)
  candidates of the pair (the validators are computed on the same target_training images for every seed);
- for the default rule and the baselines (always source, always ``bn``, a random candidate (expected value),
  the oracle choice), per pair: the mean over seeds of the regret (best candidate's true Dice minus the chosen
  one's) and how often the choice was worse than source by more than 2 Dice points;
- the verdict an adaptation bundle records beside its checkpoint (``model.validators.json``: the default rule over
  the adapted model and the source model only, :func:`monai_uda.validators.select` on those two rows of the same
  scores), per pair over the methods whose bundles record one (:data:`BUNDLE_VERDICT`): how often it is right about
  "the adapted model beats the source model" (beside always saying "adapted"), and what a user who follows it gets
  against one who always keeps the adapted model. The bundles score the first 32 target_training images; every
  pair here has at most 16, so the table is their verdict.

    python scripts/validator_study.py                 # print the tables
    python scripts/validator_study.py --write         # and put them into docs/selection.md
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from budget_checks import p_text  # this folder: the p-value format of every protocol table
from scipy.stats import spearmanr

from monai_uda.evaluation.significance import paired_test
from monai_uda.utils import atomic_write_text
from monai_uda.validators.candidates import WEAKLY_SUPERVISED
from monai_uda.validators.selection import DEFAULT_RULE as DEFAULT_RULE_COLUMNS

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks"
PAIRS = ("A1", "B2", "C1", "D1")
NOT_VALIDATORS = ("inference_seconds", "validator_seconds", "rule_score", "chosen", "checkpoint")


def load(root: Path = DOCS) -> dict[str, pd.DataFrame]:
    """``{pair: one row per (seed, candidate)}`` with the validator scores, ``rule_score``, ``chosen`` and ``dice``."""
    out = {}
    for pair in PAIRS:
        files = sorted((root / "selection" / pair).glob("seed*/selection.csv"))
        res = root / "v2" / pair / "results.csv"
        if not files or not res.is_file():
            continue
        current = dice = pd.read_csv(res).groupby(["method", "seed"]).dice.mean()
        old = res.with_name("superseded_results.csv")  # rows rerun since (scripts/stale_rows.py --drop): the
        if old.is_file():                             # selection tables scored the models of the old rows
            dice = _first_superseded(pd.read_csv(old)).combine_first(current)
        rows = []
        for f in files:
            seed = int(re.sub(r"\D", "", f.parent.name))
            t = pd.read_csv(f).assign(seed=seed)
            rescored = _rescored(f.with_name("selection.json"))  # scored again on the rerun models
            t["dice"] = [(current if c in rescored else dice).get((c, seed), np.nan) for c in t.candidate]
            rows.append(t)
        out[pair] = pd.concat(rows, ignore_index=True)
    return out


def _rescored(record: Path) -> set[str]:
    """The candidates of a selection table rescored on their rerun models (``scripts/selection_rescore.py``)."""
    return set(json.loads(record.read_text()).get("rescored", {})) if record.is_file() else set()


def _first_superseded(old: pd.DataFrame) -> pd.Series:
    """The Dice of each (method, seed) as first superseded: ``stale_rows.py --drop`` appends, so a row rerun twice
    since the selection tables were made has two archived versions, and the tables scored the first one's model."""
    return old.drop_duplicates(["method", "seed"], keep="first").set_index(["method", "seed"]).dice


def _validator_columns(df: pd.DataFrame) -> set[str]:
    """The validator scores of one pair's table (numeric columns that are not bookkeeping)."""
    return {c for c in df.columns
            if c not in (*NOT_VALIDATORS, "candidate", "seed", "dice") and pd.api.types.is_numeric_dtype(df[c])}


def correlation_table(data: dict[str, pd.DataFrame]) -> str:
    validators = sorted(set().union(*map(_validator_columns, data.values())))
    lines = ["| validator | " + " | ".join(data) + " |", "|---|" + "---|" * len(data)]
    for v in validators + ["rule_score"]:
        cells = []
        for df in data.values():
            d = df[[v, "dice"]].replace([np.inf, -np.inf], np.nan).dropna() if v in df else pd.DataFrame()
            if len(d) < 3:
                cells.append("—")
                continue
            rho, p = spearmanr(d[v], d.dice)
            cells.append(f"{rho:+.2f} (p {p:.3f}, n {len(d)})")
        name = "default rule (mean rank)" if v == "rule_score" else f"`{v}`"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def regret_table(data: dict[str, pd.DataFrame], exclude: tuple[str, ...] = ()) -> str:
    """The default rule and the baselines per pair; ``exclude``: candidates left out of the set (the rule's columns
    score each candidate alone, so the rule over a subset is exactly what ``select`` picks among that subset)."""
    data = {pair: df[~df.candidate.isin(exclude)] for pair, df in data.items()}

    lines = ["| pair | seeds | default rule: picks | regret | below source − 2 pts | always source | always `bn` | "
             "random (expected) | oracle choice |", "|---|---|---|---|---|---|---|---|---|"]
    means = {k: [] for k in ("rule", "source", "bn", "random", "oracle")}
    for pair, df in data.items():
        # the default rule applied to the recorded scores (the `chosen` column is the pick of the code that wrote
        # the table; the rule's tie-break has since become independent of the candidates' order)
        regret, worse, picks, _ = _rule_outcome(df, "default")
        per = {k: [] for k in means if k != "rule"}
        for _, g in df.dropna(subset=["dice"]).groupby("seed"):
            best, src = g.dice.max(), g.loc[g.candidate == "source", "dice"].iloc[0]
            per["source"].append(best - src)
            bn = g.loc[g.candidate == "bn", "dice"]
            per["bn"].append(best - bn.iloc[0] if len(bn) else np.nan)
            per["random"].append(best - g.dice.mean())
            per["oracle"].append(0.0)
        per["rule"] = [regret]
        cell = {k: float(np.nanmean(v)) for k, v in per.items()}
        for k, v in cell.items():
            means[k].append(v)
        lines.append(f"| {pair} | {df.seed.nunique()} | {', '.join(picks)} | {100 * cell['rule']:.1f} | {worse} | "
                     f"{100 * cell['source']:.1f} | {100 * cell['bn']:.1f} | {100 * cell['random']:.1f} | 0.0 |")
    if data:
        m = {k: 100 * float(np.nanmean(v)) for k, v in means.items()}
        lines.append(f"| mean | | | {m['rule']:.1f} | | {m['source']:.1f} | {m['bn']:.1f} | {m['random']:.1f} | 0.0 |")
    return "\n".join(lines) + "\n"


def _rule_outcome(df: pd.DataFrame, rule) -> tuple[float, int, list[str], list[float]]:
    """``rule`` (``"default"`` or a list of columns) on one pair's table: the mean over seeds of the regret, the
    seeds where the pick was more than 2 Dice points below source, the picks, and each seed's regret."""
    from monai_uda.validators import select

    columns = [c for c in (DEFAULT_RULE_COLUMNS if rule == "default" else rule) if c in df.columns]
    regrets, worse, picks = [], 0, []
    for _, g in df.dropna(subset=["dice"]).groupby("seed"):
        name, _ = select(g.set_index("candidate")[columns].apply(pd.to_numeric, errors="coerce"), columns,
                         source_name="source")
        pick = g[g.candidate == name].iloc[0]
        src = g.loc[g.candidate == "source", "dice"].iloc[0]
        regrets.append(g.dice.max() - pick.dice)
        worse += int(pick.dice < src - 0.02)
        picks.append(str(pick.candidate))
    return float(np.mean(regrets)), worse, picks, regrets


def candidate_rules(data: dict[str, pd.DataFrame]) -> dict[str, tuple[str, ...]]:
    """The rules the held-out study chooses among: the default rule, every validator alone and every two of them
    (mean rank), over the validators recorded for every pair."""
    from itertools import combinations

    names = sorted(set.intersection(*map(_validator_columns, data.values())))
    rules = {"default": tuple(DEFAULT_RULE_COLUMNS)}
    rules.update({v: (v,) for v in names})
    rules.update({f"{a}+{b}": (a, b) for a, b in combinations(names, 2)})
    return rules


def held_out_table(data: dict[str, pd.DataFrame]) -> str:
    """Leave one pair out: the rule (of :func:`candidate_rules`) with the lowest mean regret on the other pairs,
    applied to the held-out pair. This is what choosing a rule on measured pairs promises on a new one."""
    rules = candidate_rules(data)
    outcome = {(name, pair): _rule_outcome(df, cols) for name, cols in rules.items() for pair, df in data.items()}
    lines = ["| held-out pair | rule chosen on the other pairs | its regret there | held-out regret | held-out "
             "below source − 2 pts | held-out picks | default rule: held-out regret |", "|---|---|---|---|---|---|---|"]
    held, paired = [], []  # paired: (held-out rule, default rule) regret of each (pair, seed)
    for pair in data:
        train = [p for p in data if p != pair]
        if not train:
            continue
        # lowest mean regret on the other pairs; then fewer picks below source; then the name
        name = min(rules, key=lambda r: (round(np.mean([outcome[r, p][0] for p in train]), 6),
                                         sum(outcome[r, p][1] for p in train), r))
        regret, worse, picks, per_seed = outcome[name, pair]
        held.append(regret)
        paired += list(zip(per_seed, outcome["default", pair][3]))
        lines.append(f"| {pair} | `{name}` | {100 * np.mean([outcome[name, p][0] for p in train]):.1f} | "
                     f"{100 * regret:.1f} | {worse} | {', '.join(picks)} | {100 * outcome['default', pair][0]:.1f} |")
    if held:
        default = np.mean([outcome["default", p][0] for p in data])
        lines.append(f"| mean | | | {100 * np.mean(held):.1f} | | | {100 * default:.1f} |")
    # the benchmark's paired test, with (pair, seed) runs in place of (seed, image) pairs
    runs = pd.DataFrame([{"method": m, "seed": i, "name": "", "regret": r}
                         for i, both in enumerate(paired) for m, r in zip(("held_out", "default"), both)])
    test = paired_test(runs, "held_out", baseline="default", metric="regret") if paired else {"p": np.nan}
    if np.isfinite(test["p"]):
        diff = [a - b for a, b in paired]
        lines += ["", f"Held-out rule against the default rule, per (pair, seed) regret: {100 * test['mean_diff']:+.1f} "
                      f"points on average, lower in {sum(d < 0 for d in diff)} and higher in "
                      f"{sum(d > 0 for d in diff)} of {len(diff)} runs; two-sided Wilcoxon signed-rank "
                      f"{p_text(test['p'])}."]
    return "\n".join(lines) + "\n"


def _points(x: float) -> str:
    """A Dice difference in points, signed, one decimal (never "-0.0")."""
    return f"{round(100 * float(x), 1) + 0.0:+.1f} pts"


#: the benchmark methods whose bundle run records a verdict (``model.validators.json`` with a source model): not the
#: ``bn_source`` control, not the shallow-to-deep family (no source network in its bundle), not ``fda``/``histmatch``
#: (the source bundle trained on translated images)
BUNDLE_VERDICT = ("bn", "bn_reset", "early", "st", "cbst", "buda", "selftrain", "mcdropout", "past")


def pairwise_table(data: dict[str, pd.DataFrame], methods: tuple[str, ...] = BUNDLE_VERDICT) -> str:
    """The two-model verdict of ``record_validator_scores`` for every (method, seed) of ``methods``: right or wrong
    (right = it says "adapted" exactly when the adapted model's true Dice is above the source's), and its worth."""
    from monai_uda.validators import select

    lines = ["| pair | rule columns | adapted models | verdict right | always adapted: right | says adapted, 2+ pts "
             "worse than source | says source, 2+ pts better than source | follow the verdict: Dice − source | "
             "always adapted: Dice − source |", "|---|---|---|---|---|---|---|---|---|"]
    for pair, df in data.items():
        right = naive = bad_keep = bad_adapt = 0
        follow, always = [], []
        columns = [c for c in DEFAULT_RULE_COLUMNS if c in df.columns]
        if not columns:
            continue
        for _, g in df.dropna(subset=["dice"]).groupby("seed"):
            src = g[g.candidate == "source"]
            if src.empty:
                continue
            for _, row in g[g.candidate.isin(methods)].iterrows():
                two = pd.concat([src, row.to_frame().T]).set_index("candidate")[columns]
                chosen, _ = select(two.apply(pd.to_numeric, errors="coerce"), "default", source_name="source")
                gain = float(row.dice) - float(src.dice.iloc[0])
                right += int((chosen != "source") == (gain > 0))
                naive += int(gain > 0)
                bad_adapt += int(chosen != "source" and gain < -0.02)
                bad_keep += int(chosen == "source" and gain > 0.02)
                follow.append(gain if chosen != "source" else 0.0)
                always.append(gain)
        n = len(always)
        if not n:
            continue
        lines.append(f"| {pair} | {', '.join(columns)} | {n} | {right} ({100 * right / n:.0f} %) | "
                     f"{naive} ({100 * naive / n:.0f} %) | {bad_adapt} | {bad_keep} | "
                     f"{_points(np.mean(follow))} | {_points(np.mean(always))} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", action="store_true", help="update docs/selection.md between its markers")
    a = p.parse_args()
    data = load()
    if not data:
        sys.exit("no selection tables under docs/benchmarks/selection/<pair>/seed<k>/ (run monai-uda select first)")
    blocks = {"validator-correlation": correlation_table(data), "selection-regret": regret_table(data),
              "selection-regret-unsupervised": regret_table(data, exclude=tuple(WEAKLY_SUPERVISED)),
              "selection-held-out": held_out_table(data), "pairwise-verdict": pairwise_table(data)}
    for name, text in blocks.items():
        print(text)
    if a.write:
        doc = REPO / "docs" / "selection.md"
        s = doc.read_text()
        for name, text in blocks.items():
            start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
            if start not in s:
                s += f"\n{start}\n{end}\n"
            s = s[:s.index(start) + len(start)] + "\n" + text + s[s.index(end):]
        atomic_write_text(doc, s)


if __name__ == "__main__":
    main()
