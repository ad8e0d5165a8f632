"""Print the README's result tables (markdown) from the benchmark CSVs in docs/benchmarks/<pair>/results.csv.

    python scripts/results_tables.py [docs/benchmarks]

Tables: target-test Dice (gap closed) of every method on every pair; and the per-family columns the
method issues ask for (epochs to convergence, Dice loss and IoU, F1 and scribble budget, translation time).
Only numbers in the CSVs are printed; a method not run on a pair is shown as "—".
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

PAIRS = ["A1", "B2", "C1", "D1"]
ORDER = ["source", "oracle", "bn", "early", "st", "cbst", "buda", "selftrain", "mcdropout", "rf", "enhancer", "s2d",
         "s2d_noteacher", "s2d_norect", "past", "fda", "histmatch"]


#: sub-folder of a pair's results holding a later rerun of some methods (with that run's own source and oracle)
RERUNS = {"early": "early_guard"}


def load(root: Path, sub: str = "") -> pd.DataFrame | None:
    """Every pair's ``<root>/<pair>/<sub>/results.csv`` in one table (None if there is none)."""
    files = [root / p / sub / "results.csv" for p in PAIRS]
    frames = [pd.read_csv(f) for f in files if f.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else None


def with_reruns(df: pd.DataFrame, root: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Replace each rerun method's rows by those of its rerun; returns the table and the reruns."""
    reruns = {}
    for method, sub in RERUNS.items():
        rr = load(root, sub)
        if rr is None:
            continue
        reruns[method] = rr
        df = pd.concat([df[~((df.method == method) & df.pair.isin(rr.pair.unique()))], rr[rr.method == method]],
                       ignore_index=True)
    return df, reruns


def _early_outcome(r) -> str:
    if "diverged" in r and bool(r.diverged == True):  # noqa: E712 (NaN-safe)
        return f"{int(r.epochs)} (guard: restored epoch {int(r.restored_epoch)})"
    return f"{int(r.epochs)} ({'stopped' if bool(r.converged) else 'cap'})"


def cell(df: pd.DataFrame, pair: str, method: str, fmt) -> str:
    row = df[(df.pair == pair) & (df.method == method)]
    return "—" if row.empty else fmt(row.iloc[0])


def table(df: pd.DataFrame, methods, pairs, fmt, header: str) -> str:
    lines = [f"| {header} | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    for m in methods:
        if (df.method == m).any():
            lines.append(f"| {m} | " + " | ".join(cell(df, p, m, fmt) for p in pairs) + " |")
    return "\n".join(lines)


def main(root: str = "docs/benchmarks") -> None:
    df, reruns = with_reruns(load(Path(root)), Path(root))
    pairs = [p for p in PAIRS if (df.pair == p).any()]
    print("Target-test Dice (gap closed):\n")
    mark = lambda r: " †" if r.method in reruns else ""  # noqa: E731
    print(table(df, ORDER, pairs, lambda r: f"{r.dice:.3f} ({r.gap_closed:+.2f}){mark(r)}", "method"))
    for method, rr in reruns.items():
        print(f"\n† {method}: rerun ({RERUNS[method]}/), gap closed against that run's own source and oracle:\n")
        print(table(rr, ["source", "oracle", method], [p for p in pairs if (rr.pair == p).any()],
                    lambda r: f"{r.dice:.3f} ({r.gap_closed:+.2f})", "method"))
    print("\nSelf-training of early features: epochs run (cap = budget epochs) and how refinement ended:\n")
    print(table(df, ["early"], pairs, _early_outcome, "method"))
    print("\nBUDA-Seg family: Dice loss / IoU on the target test set (paper Table 1 reports both):\n")
    print(table(df, ["source", "buda", "selftrain", "mcdropout", "oracle"], pairs,
                lambda r: f"{r.dice_loss:.3f} / {r.iou:.3f}", "method"))
    print("\nShallow-to-deep: F1 (simulated scribbles: images / labelled pixels, of which foreground):\n")
    print(table(df, ["source", "rf", "enhancer", "s2d", "s2d_noteacher", "s2d_norect", "oracle"], pairs,
                lambda r: f"{r.f1:.3f}", "method"))
    s = df[df.method == "s2d"]
    print("\nscribble budget: " + "; ".join(
        f"{r.pair} {int(r.scribble_images)} images, {int(r.scribble_pixels)} px ({int(r.scribble_fg_pixels)} fg)"
        for r in s.itertuples()))
    if "translation_seconds" in df:
        print("\nPAST: CycleGAN translation training time (s) / whole method (s):\n")
        print(table(df, ["past"], pairs, lambda r: f"{r.translation_seconds:.0f} / {r.seconds:.0f}", "method"))


if __name__ == "__main__":
    main(*sys.argv[1:])
