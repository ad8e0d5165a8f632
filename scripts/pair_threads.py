"""The torch thread count for continuing a benchmark folder: the one its finished rows used, else the default.

    python scripts/pair_threads.py RUN_DIR [COMMITTED_DIR] --default N

Reads ``RUN_DIR/results.csv``, else ``COMMITTED_DIR/results.csv`` (a new machine continues from the committed
rows). A source model trained again is deterministic per seed and thread count, so a folder's rows keep one count:
rows with mixed counts, or rows without a ``threads`` column, are refused (exit 1, one line on stderr).
Prints the count. Used by scripts/full_benchmarks.sh and scripts/fidelity_runs.sh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def pair_threads(folders: list[Path], default: int) -> int:
    for folder in folders:
        csv = Path(folder) / "results.csv"
        try:
            df = pd.read_csv(csv)
        except (OSError, pd.errors.EmptyDataError):
            continue
        if df.empty:
            continue
        if "threads" not in df:
            raise ValueError(f"{csv}: rows without a 'threads' column; continue it with the count they used")
        counts = sorted({int(t) for t in df["threads"].dropna()})
        if len(counts) > 1:
            raise ValueError(f"{csv}: rows made with {', '.join(map(str, counts))} threads; one count per folder")
        if counts:
            return counts[0]
    return int(default)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--default", type=int, required=True)
    a = p.parse_args()
    try:
        print(pair_threads(a.folders, a.default))
    except ValueError as e:
        sys.exit(f"pair_threads: {e}")


if __name__ == "__main__":
    main()
