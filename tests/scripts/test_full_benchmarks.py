"""scripts/full_benchmarks.sh: a pair that has finished rows keeps their thread count."""

import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "full_benchmarks.sh"


def _pair_threads(cwd: Path, pair_dir: str, default: int) -> str:
    """Run the script's ``pair_threads`` function alone (the rest of the script would start the benchmark)."""
    text = SCRIPT.read_text()
    body = text[text.index("pair_threads() {"):]
    body = body[:body.index("\n}\n") + 3]
    cmd = f"default_threads={default}\n{body}\npair_threads {pair_dir}\n"
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def test_a_pair_keeps_the_thread_count_of_its_finished_rows(tmp_path):
    out = tmp_path / "results" / "v2"
    (out / "A1").mkdir(parents=True)
    pd.DataFrame({"method": ["source", "bn"], "threads": [1, 1]}).to_csv(out / "A1" / "results.csv", index=False)
    committed = tmp_path / "docs" / "benchmarks" / "v2" / "C1"  # a new machine: only the committed rows
    committed.mkdir(parents=True)
    pd.DataFrame({"method": ["source"], "threads": [1]}).to_csv(committed / "results.csv", index=False)
    assert _pair_threads(tmp_path, "results/v2/A1", 2).strip() == "1"
    assert _pair_threads(tmp_path, "results/v2/C1", 2).strip() == "1"
    assert _pair_threads(tmp_path, "results/v2/B2", 2).strip() == "2"  # no rows yet: MONAI_UDA_THREADS
