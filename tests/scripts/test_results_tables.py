import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))
import results_tables  # noqa: E402


def test_the_committed_benchmark_page_is_what_the_generator_writes():
    """docs/benchmarks/README.md is generated (its first lines say so): a hand edit there is lost at the next
    ``--write`` unless it is made in scripts/results_tables.py, so the page must equal the generator's output."""
    page = REPO / "docs" / "benchmarks" / "README.md"
    assert results_tables.document(str(REPO / "docs" / "benchmarks")) == page.read_text(encoding="utf-8")
