"""Tables of docs/benchmarks/protocol.md from the committed protocol runs.

    python scripts/protocol_tables.py                 # print the tables
    python scripts/protocol_tables.py --write         # protocol.md and v2/README.md (or the pages given)

- Convergence of source and oracle: ``docs/benchmarks/convergence/<pair>/`` holds the benchmark output of
  ``--methods source,oracle`` with the bundle's cap and early-stopping patience doubled (2x: 160 epochs,
  patience 20) and each training's validation curve (``<model>_validation_history.csv``). A training is
  deterministic given its seed and thread count, and neither the cap nor the patience changes what happens
  before it stops, so the 1x training (80 epochs, patience 10) is the 2x curve up to where the 1x rule stops:
  :func:`replay` reads the 1x result off the 2x curve. Where a real 1x run exists
  (``<pair>/1x/<model>_validation_history.csv``) the table checks that its curve is that prefix.

- The v2 results: ``docs/benchmarks/v2/<pair>/{results,per_image}.csv`` (``scripts/full_benchmarks.sh``).
  :func:`v2_table` gives every method on every pair (Dice mean ± std over seeds, the seeds run, and the
  paired Wilcoxon mark against source); :func:`v2_summary` the best method per pair among those
  significantly better than source.

``--write`` replaces the text between ``<!-- convergence -->`` and ``<!-- /convergence -->`` (and between
``<!-- v2 -->`` and ``<!-- /v2 -->``, ``<!-- v2-summary -->`` and ``<!-- /v2-summary -->``, ``<!-- budget -->``
and ``<!-- /budget -->``: the diminishing-returns checks of ``budget_checks.py``) in the pages: protocol.md,
v2/README.md and the top-level README.md (its summary table).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd
from budget_checks import budget_table, mean_std  # this folder: the diminishing-returns checks
from results_tables import ORDER, PAIRS  # this folder's v1 page: the same pairs and method order
from stale_rows import S2D_FAMILY, stale  # this folder: rows made at a budget the bundle has since left

from monai_uda.benchmarks.plan import PAIR_FAMILIES
from monai_uda.benchmarks.plan import plan as benchmark_plan
from monai_uda.evaluation.significance import paired_test
from monai_uda.utils import atomic_write_text

ROOT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"


def _row(path: Path, method: str):
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    df = df[df.method == method]
    return None if df.empty else df.iloc[0]


#: the bundle's cap (epochs) and early-stopping patience (validations); the 2x runs double both
CAP, PATIENCE = 80, 10


def replay(history: pd.DataFrame, cap: int = CAP, patience: int = PATIENCE) -> dict:
    """Best validation Dice, its iteration and the iterations run, had the training stopped by ``cap`` and
    ``patience`` (ignite's EarlyStopping, min_delta 0) - the part of ``history`` such a run would have seen."""
    best, best_i, counter, stop = None, 0, 0, None
    for i, score in enumerate(history.val_mean_dice[:cap]):
        if best is None or score > best:
            best, best_i, counter = score, i, 0
        else:
            counter += 1
            if counter >= patience:
                stop = i
                break
    stop = min(len(history), cap) - 1 if stop is None else stop
    return {"val_dice": float(best), "best_iteration": int(history.iteration.iloc[best_i]),
            "iterations": int(history.iteration.iloc[stop])}


def _prefix_check(root: Path, pair: str, model: str, h2: pd.DataFrame) -> str:
    p = root / "convergence" / pair / "1x" / f"{model}_validation_history.csv"
    if not p.is_file():
        return ""
    h1 = pd.read_csv(p)
    same = len(h1) <= len(h2) and (h1.val_mean_dice.values == h2.val_mean_dice.values[: len(h1)]).all()
    return " (1x run: same curve)" if same else " (1x run: DIFFERENT curve)"


def convergence_table(root: Path = ROOT) -> str:
    lines = ["| pair | model | 1x: val Dice (best at / ran) | 2x: val Dice (best at / ran) | 2x - 1x | "
             "2x target-test Dice |",
             "|---|---|---|---|---|---|"]
    for pair in PAIRS:
        for model in ("source", "oracle"):
            hp = root / "convergence" / pair / f"{model}_validation_history.csv"
            r2 = _row(root / "convergence" / pair / "results.csv", model)
            if not hp.is_file() or r2 is None:
                continue
            h2 = pd.read_csv(hp)
            one, two = replay(h2), replay(h2, 2 * CAP, 2 * PATIENCE)
            assert abs(two["val_dice"] - r2.val_dice) < 1e-4, f"{pair} {model}: curve and row disagree"

            def val(r):
                return f"{r['val_dice']:.3f} ({r['best_iteration']} / {r['iterations']})"

            diff = 100 * (two["val_dice"] - one["val_dice"])
            lines.append(f"| {pair} | {model} | {val(one)}{_prefix_check(root, pair, model, h2)} | {val(two)} | "
                         f"{diff:+.1f} points | {r2.dice:.3f} |")
    return "\n".join(lines) + "\n"


def _v2(root: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
    """``{pair: (results, per_image)}`` of the v2 pairs that have both files."""
    out = {}
    for pair in PAIRS:
        rp, ip = root / "v2" / pair / "results.csv", root / "v2" / pair / "per_image.csv"
        if rp.is_file() and ip.is_file():
            out[pair] = (pd.read_csv(rp), pd.read_csv(ip))
    return out


#: the mark of a cell with rows made at a budget the bundle has since left (scripts/stale_rows.py), and its note
STALE_MARK = "‡"
STALE_NOTE = (f"{STALE_MARK} made with an earlier Prediction Enhancer rule than `train_enhancer.json`'s (the row's "
              "`enhancer_epochs` or `enhancer_validated` differ), or a pseudo-label net with other epochs than "
              "`adapt.json`'s; rerun pending (`scripts/stale_rows.py`). On "
              "`selected`: a seed's pick is such a model, or a model whose row has been rerun since (the pick is not "
              "rerun: that needs every candidate of its time).\n")


def stale_methods(data: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> dict[str, set[str]]:
    """Per pair of :func:`_v2`'s ``data``, the methods with rows made at an enhancer rule the bundle has left, and
    ``selected`` where a seed's pick is one of those or a model whose row has been rerun since the pick (its Dice is
    no longer the picked method's row of that seed)."""
    from monai_uda.benchmarks.methods_s2d import enhancer_epochs, enhancer_validated, net_epochs

    epochs, validated, nets = enhancer_epochs({}), enhancer_validated({}), net_epochs({})  # the bundle's, read once
    out = {}
    for pair, (df, _) in data.items():
        old = set(stale(df, epochs, validated, nets=nets).method)
        dice = df.groupby(["method", "seed"]).dice.mean()
        for _, r in df[df.method == "selected"].iterrows():
            m = str(r.get("selected_method", ""))
            now = dice.get((m, r.seed), float("nan"))
            if m in old or not abs(now - r.dice) <= 1e-9:
                old.add("selected")
        out[pair] = old
    return out


def _stale_note(old: dict[str, set[str]]) -> str:
    return f"\n{STALE_NOTE}" if any(old.values()) else ""


def v2_table(root: Path = ROOT) -> str:
    """Target-test Dice, mean ± std over seeds (seeds run), with the paired test against source; a cell whose rows
    were made at a budget the bundle has since left carries :data:`STALE_MARK`."""
    data = _v2(root)
    if not data:
        return "No v2 results yet.\n"
    pairs = list(data)
    old = stale_methods(data)
    lines = ["| method | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    for m in ORDER:
        cells = []
        for pair in pairs:
            df, pi = data[pair]
            g = df[df.method == m]
            if g.empty:
                cells.append("—")
                continue
            mark = "" if m == "source" else " " + paired_test(pi, m)["mark"]
            cells.append(f"{mean_std(g.dice)} ({len(g)}){mark}" + (f" {STALE_MARK}" if m in old[pair] else ""))
        if any(c != "—" for c in cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n" + _stale_note(old)


#: rows that are not adaptations (they use no target image): never "the best adaptation"
CONTROLS = ("bn_source",)
#: rows that are not a method of their own: the label-free pick among the others (monai_uda.validators)
PICKS = ("selected",)


def bn_control_table(root: Path = ROOT) -> str:
    """BN re-estimation on target images (``bn``: Algorithm 1, ``bn_reset``) against the same re-estimation on
    whole source images (``bn_source``, the control): the paired test says whether the target images add anything."""
    lines = ["| pair | bn_source (control) | bn | bn vs control | bn_reset | bn_reset vs control |", "|---|---|---|---|---|---|"]
    for pair, (df, pi) in _v2(root).items():
        if "bn_source" not in set(df.method):
            continue

        def cell(m):
            g = df[df.method == m]
            return "—" if g.empty else mean_std(g.dice)

        def vs(m):
            if m not in set(df.method):
                return "—"
            t = paired_test(pi, m, baseline="bn_source")
            return f"{t['mark']} ({t['mean_diff']:+.3f}, p {t['p']:.3f})"

        lines.append(f"| {pair} | {cell('bn_source')} | {cell('bn')} | {vs('bn')} | {cell('bn_reset')} | {vs('bn_reset')} |")
    return "\n".join(lines) + "\n"


def v2_summary(root: Path = ROOT) -> str:
    """Per pair: source, oracle, the best method significantly better than source (or none), and what the
    label-free default rule picked (``selected``: Dice, its mark against source, the methods it picked per seed)."""
    data = _v2(root)
    if not data:
        return "No v2 results yet.\n"
    lines = ["| pair | source | oracle | best adaptation (highest mean of those significantly better than source) | label-free pick "
             "(`selected`) | seeds | methods run |", "|---|---|---|---|---|---|---|"]
    old = stale_methods(data)
    for pair, (df, pi) in data.items():
        def ms(m):
            g = df[df.method == m]
            return "—" if g.empty else mean_std(g.dice) + (f" {STALE_MARK}" if m in old[pair] else "")
        better = [(df[df.method == m].dice.mean(), m) for m in df.method.unique()
                  if m not in ("source", "oracle", *CONTROLS, *PICKS) and paired_test(pi, m)["mark"] == "+"]
        best = max(better) if better else None
        cell = "none" if best is None else f"{best[1]}: {ms(best[1])}"
        if best is not None:  # the other methods better than source that the paired test cannot tell from the best
            tied = [m for _, m in sorted(better, reverse=True)
                    if m != best[1] and paired_test(pi, m, baseline=best[1])["mark"] == "="]
            cell += (f"; no significant difference from it: {', '.join(tied)}" if tied else
                     "; the only one" if len(better) == 1 else
                     "; significantly above every other method that beats source")
        sel = df[df.method == "selected"]
        if sel.empty:
            pick = "not run"
        else:
            picked = ", ".join(str(m) for m in sel.sort_values("seed").get("selected_method", pd.Series(dtype=str)))
            pick = f"{ms('selected')} {paired_test(pi, 'selected')['mark']} ({picked})"
        ran = [m for m in df.method.unique() if m not in ("source", "oracle", *CONTROLS, *PICKS)]
        lines.append(f"| {pair} | {ms('source')} | {ms('oracle')} | {cell} | {pick} | {df.seed.nunique()} | "
                     f"{', '.join(ran) or 'none'} |")
    return "\n".join(lines) + "\n" + _stale_note(old)


#: cheaper configurations measured against the v2 one: folder under docs/benchmarks/cheaper/ -> (pair, what changed)
CHEAPER = {"A1_half_width": ("A1", "UDAUNet features halved: (8, 8, 16, 32, 64, 8) instead of (16, 16, 32, 64, 128, 16)")}


def cheaper_table(root: Path = ROOT) -> str:
    """Each cheaper configuration against the v2 one on the same pair, seeds and test images: Dice (mean ±
    std over seeds), the paired Wilcoxon test (cheaper vs v2, per (seed, image)) and wall seconds per row."""
    lines = ["| configuration | model | v2 Dice | cheaper Dice | cheaper − v2 (p) | v2 s / row | cheaper s / row |",
             "|---|---|---|---|---|---|---|"]
    for name, (pair, what) in CHEAPER.items():
        d = root / "cheaper" / name
        full_r, full_i = root / "v2" / pair / "results.csv", root / "v2" / pair / "per_image.csv"
        if not all(f.is_file() for f in (d / "results.csv", d / "per_image.csv", full_r, full_i)):
            lines.append(f"| {name} | not measured | | | | | |")
            continue
        cr, ci, fr, fi = (pd.read_csv(f) for f in (d / "results.csv", d / "per_image.csv", full_r, full_i))
        for m in cr.method.unique():
            b = cr[cr.method == m]
            a = fr[(fr.method == m) & fr.seed.isin(b.seed)]  # the seeds both have: the same models, paired
            if a.empty:
                continue
            both = pd.concat([fi[fi.method == m].assign(method="v2"), ci[ci.method == m].assign(method="cheaper")])
            t = paired_test(both, "cheaper", baseline="v2")
            lines.append(f"| {name} | {m} | {mean_std(a.dice)} | {mean_std(b.dice)} | "
                         f"{t['mean_diff']:+.3f} ({t['p']:.3f}) {t['mark']} | {a.wall_seconds.mean():.0f} | "
                         f"{b.wall_seconds.mean():.0f} |")
    notes = [f"`{name}` ({pair}): {what}." for name, (pair, what) in CHEAPER.items()]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


#: the methods full_benchmarks.sh runs on each pair (monai_uda/benchmarks/plan.py)
PLAN = {pair: benchmark_plan(pair) for pair in PAIR_FAMILIES}


def _convergence_seconds(root: Path, pair: str, model: str) -> float | None:
    """Wall seconds of a 1x training of ``model`` on ``pair``, from the 2x convergence run (its seconds scaled by
    the iterations the 1x rule would have run)."""
    hp = root / "convergence" / pair / f"{model}_validation_history.csv"
    r2 = _row(root / "convergence" / pair / "results.csv", model)
    if not hp.is_file() or r2 is None or "wall_seconds" not in r2:
        return None
    h2 = pd.read_csv(hp)
    one, two = replay(h2), replay(h2, 2 * CAP, 2 * PATIENCE)
    return float(r2.wall_seconds) * one["iterations"] / max(two["iterations"], 1)


def cost_table(root: Path = ROOT, seeds: int = 3) -> str:
    """Hours of the full benchmark (every pair and method of :data:`PLAN`, ``seeds`` seeds, one thread).

    A (pair, method) with v2 rows counts its measured mean wall seconds (method + evaluation) per seed. One
    without is estimated from its v1 seconds (``docs/benchmarks/<pair>/results.csv``, one seed, 240
    iterations) times the median v2/v1 ratio of the same method over the pairs where both exist, or over all
    measured adaptation methods (source and oracle's convergence training excluded) when the method has no v2
    row anywhere; source and oracle use their convergence run's time instead (cut to the 1x stop); a method without a v1 row counts its mean measured time on the other pairs, else it is not
    counted.
    """
    data = _v2(root)
    v2 = {p: _shared_stage_once(r) for p, (r, _) in data.items()}
    v1 = {p: pd.read_csv(root / p / "results.csv") for p in PAIRS if (root / p / "results.csv").is_file()}
    marked = {p for p, methods in stale_methods(data).items() if methods - {"selected"}}  # stale method rows

    def sec(df, m, col):
        g = df[df.method == m] if df is not None else pd.DataFrame()
        return float(g[col].mean()) if len(g) and col in g else None

    ratios: dict[str, list[float]] = {}
    for p, r in v2.items():
        for m in r.method.unique():
            a, b = sec(r, m, "wall_seconds"), sec(v1.get(p), m, "seconds")
            if a and b:
                ratios.setdefault(m, []).append(a / b)
    every = [x for m, v in ratios.items() if m not in ("source", "oracle") for x in v]  # adaptation rows only
    overall = float(pd.Series(every).median()) if every else None
    lines = ["| pair | measured rows (hours) | estimated rows (hours) | not estimated |", "|---|---|---|---|"]
    total_m = total_e = 0.0
    for p, methods in PLAN.items():
        meas = est = 0.0
        n_meas, n_est, missing = 0, 0, []
        for m in methods:
            w = sec(v2.get(p), m, "wall_seconds")
            if w is not None:
                meas += w * seeds
                n_meas += 1
                continue
            conv = _convergence_seconds(root, p, m)
            if conv is not None:  # source/oracle: the 2x convergence run's time, cut to where the 1x rule stops
                est += conv * seeds
                n_est += 1
                continue
            r = float(pd.Series(ratios[m]).median()) if m in ratios else overall
            b = sec(v1.get(p), m, "seconds")
            elsewhere = [w for q, df in v2.items() if q != p and (w := sec(df, m, "wall_seconds")) is not None]
            if r is not None and b is not None:
                est += b * r * seeds
            elif elsewhere:  # no v1 row (a method added since): its measured time on the other pairs
                est += float(pd.Series(elsewhere).mean()) * seeds
            else:
                missing.append(m)
                continue
            n_est += 1
        total_m, total_e = total_m + meas, total_e + est
        mark = f" {STALE_MARK}" if p in marked else ""
        lines.append(f"| {p}{mark} | {n_meas} methods ({meas / 3600:.1f} h) | {n_est} methods ({est / 3600:.1f} h) | "
                     f"{', '.join(missing) or '—'} |")
    lines.append(f"| all | {total_m / 3600:.1f} h | {total_e / 3600:.1f} h | total {(total_m + total_e) / 3600:.1f} h "
                 f"on one thread |")
    note = ""
    if marked:
        note = (f"\n{STALE_MARK} its shallow-to-deep rows were made with an earlier Prediction Enhancer rule, so their "
                "hours count that rule's shorter enhancer training.\n")
    return "\n".join(lines) + "\n" + note


#: the benchmark rows that share a seed's source forests and Prediction Enhancer (``seed<k>/s2d_common``)
SHARED_STAGE = ("rf", *S2D_FAMILY)


def _shared_stage_once(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the ``wall_seconds`` of the shallow-to-deep rows made so that a seed's shared stage (source forests
    and enhancer training: ``source_forests_s`` + ``enhancer_train_s``) counts once, in its ``enhancer`` row.

    The row that built the stage carries its time in ``wall_seconds``; the others reused it, and a row may reuse a stage
    built by another run (the A1 rows of the 4x rule reused the enhancers of the ``s2d_enhancer_val_4x`` check), so
    each row's own time is its wall seconds less the stage's where they include it (wall >= the stage's time), and the
    ``enhancer`` row's stage time (that of the current rule's enhancer) is added to it."""
    if "enhancer_train_s" not in df or "wall_seconds" not in df:
        return df
    df = df.copy()
    fam = df.method.isin(SHARED_STAGE) & df.enhancer_train_s.notna()
    stage = df.enhancer_train_s.fillna(0) + df.get("source_forests_s", pd.Series(0.0, df.index)).fillna(0)
    built = fam & (df.wall_seconds >= df.enhancer_train_s)
    df.loc[built, "wall_seconds"] -= stage[built]
    enh = fam & (df.method == "enhancer")
    df.loc[enh, "wall_seconds"] += stage[enh]
    return df


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", nargs="*", default=None, help="the pages whose marked sections to replace")
    a = p.parse_args()
    tables = {"convergence": convergence_table(), "v2": v2_table(), "v2-summary": v2_summary(),
              "budget": budget_table(), "cheaper": cheaper_table(), "bn-control": bn_control_table(),
              "cost": cost_table()}
    if a.write is None:
        for name, table in tables.items():
            print(f"## {name}\n\n{table}")
        return
    for page in map(Path, a.write or [ROOT / "protocol.md", ROOT / "v2" / "README.md", ROOT.parents[1] / "README.md"]):
        text = page.read_text()
        for name, table in tables.items():
            text = re.sub(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)",
                          lambda m, t=table: m.group(1) + t + m.group(2), text, flags=re.S)
        atomic_write_text(page, text)
        print(f"wrote {page}")


if __name__ == "__main__":
    main()
