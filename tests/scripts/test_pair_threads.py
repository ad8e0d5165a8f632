"""scripts/pair_threads.py: a benchmark folder keeps the thread count of its finished rows."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from pair_threads import pair_threads  # noqa: E402


def _rows(folder: Path, threads: list | None) -> Path:
    """A results.csv of one row per thread count (``None``: two rows without a threads column)."""
    folder.mkdir(parents=True)
    cols = {"method": ["source", "bn"]} if threads is None else {"method": ["source"] * len(threads), "threads": threads}
    pd.DataFrame(cols).to_csv(folder / "results.csv", index=False)
    return folder


def test_finished_rows_then_committed_rows_then_the_default(tmp_path):
    here, committed = _rows(tmp_path / "run", [1, 1]), _rows(tmp_path / "docs", [2])
    assert pair_threads([here, committed], default=2) == 1  # this machine's rows first
    assert pair_threads([tmp_path / "none", committed], default=1) == 2  # a new machine: the committed rows
    assert pair_threads([tmp_path / "none", tmp_path / "nothing"], default=2) == 2  # no rows yet


def test_mixed_or_unknown_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="rows made with 1, 2 threads"):
        pair_threads([_rows(tmp_path / "mixed", [1, 2])], default=1)
    with pytest.raises(ValueError, match="without a 'threads' column"):
        pair_threads([_rows(tmp_path / "old", None)], default=1)
    r = subprocess.run([sys.executable, str(SCRIPTS / "pair_threads.py"), str(tmp_path / "mixed"), "--default", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and r.stdout == "" and r.stderr.strip().count("\n") == 0 and "mixed" in r.stderr
