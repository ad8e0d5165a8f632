"""Tables of docs/benchmarks/protocol.md from the committed protocol runs.

    python scripts/protocol_tables.py [--write docs/benchmarks/protocol.md]

- Convergence of source and oracle: ``docs/benchmarks/convergence/<pair>/{1x,2x}/`` hold the benchmark
  outputs of ``--methods source,oracle`` at the bundle's cap (1x) and with the cap and the early-stopping
  patience doubled (2x), plus each training's ``validation_history.csv``. The table gives the best validation
  Dice (the checkpoint kept), when it was reached, how long training ran, and the target-test Dice.

``--write`` replaces the text between ``<!-- convergence -->`` and ``<!-- /convergence -->`` in the page.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
PAIRS = ["A1", "B2", "C1", "D1"]


def _row(path: Path, method: str):
    if not path.is_file():
        return None
    df = pd.read_csv(path)
    df = df[df.method == method]
    return None if df.empty else df.iloc[0]


def convergence_table(root: Path = ROOT) -> str:
    lines = ["| pair | model | 1x: val Dice (best at / ran, iterations) | 2x: val Dice (best at / ran) | "
             "val difference | 1x target Dice | 2x target Dice |",
             "|---|---|---|---|---|---|---|"]
    for pair in PAIRS:
        for model in ("source", "oracle"):
            r1 = _row(root / "convergence" / pair / "1x" / "results.csv", model)
            r2 = _row(root / "convergence" / pair / "2x" / "results.csv", model)
            if r1 is None and r2 is None:
                continue

            def val(r):
                return "—" if r is None else f"{r.val_dice:.3f} ({int(r.best_iteration)} / {int(r.iterations)})"

            diff = "—" if r1 is None or r2 is None else f"{100 * (r2.val_dice - r1.val_dice):+.1f} points"
            tgt = ["—" if r is None else f"{r.dice:.3f}" for r in (r1, r2)]
            lines.append(f"| {pair} | {model} | {val(r1)} | {val(r2)} | {diff} | {tgt[0]} | {tgt[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--write", default=None, help="the page whose marked sections to replace")
    a = p.parse_args()
    table = convergence_table()
    if a.write is None:
        print(table)
        return
    page = Path(a.write)
    text = page.read_text()
    new = re.sub(r"(<!-- convergence -->\n).*?(<!-- /convergence -->)", lambda m: m.group(1) + table + m.group(2),
                 text, flags=re.S)
    page.write_text(new)


if __name__ == "__main__":
    main()
