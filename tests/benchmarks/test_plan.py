"""The benchmark plan (monai_uda/benchmarks/plan.py) that full_benchmarks.sh and the cost table share."""

import subprocess
import sys

import pytest

from monai_uda.benchmarks import methods as registry
from monai_uda.benchmarks.plan import PAIR_FAMILIES, plan, schedule


def test_every_planned_method_is_a_benchmark_method():
    known = set(registry.load_methods())
    for pair in PAIR_FAMILIES:
        assert set(plan(pair)) <= known, (pair, set(plan(pair)) - known)


def test_stages_grow_and_selected_runs_after_every_other_method_of_its_pair():
    seen: dict[str, list[str]] = {}
    for pair, methods in schedule():
        before = seen.get(pair, [])
        assert methods[: len(before)] == before, (pair, methods)  # a stage only adds methods (resume skips the rest)
        assert "selected" not in before, f"{pair}: a stage runs after selected"
        seen[pair] = methods
    for pair, methods in seen.items():
        assert methods == plan(pair) and methods[-1] == "selected" and len(set(methods)) == len(methods)


def test_unknown_pair_is_a_one_line_error():
    with pytest.raises(KeyError, match="no benchmark plan for pair 'Z9'"):
        plan("Z9")


def test_the_shell_script_reads_one_line_per_stage():
    out = subprocess.run([sys.executable, "-m", "monai_uda.benchmarks.plan"], capture_output=True, text=True, check=True)
    lines = [ln.split(" ") for ln in out.stdout.strip().splitlines()]
    assert [(p, m.split(",")) for p, m in lines] == schedule()


def test_the_stage_order():
    """Stage k runs each pair's first k families (A1, B2, C1, D1 in turn): D1's third family (pixel alignment) comes
    at stage 3, before C1's fourth; then every pair's whole plan."""
    got = [(pair, methods[-1]) for pair, methods in schedule()]
    assert got == [("A1", "bn_reset"), ("B2", "bn_reset"), ("C1", "bn_reset"), ("D1", "bn_reset"),
                   ("A1", "early"), ("B2", "early"), ("C1", "early"), ("D1", "early"),
                   ("A1", "s2d_norect"), ("B2", "s2d_norect"), ("C1", "s2d_norect"), ("D1", "histmatch"),
                   ("C1", "histmatch"),
                   ("A1", "selected"), ("B2", "selected"), ("C1", "selected"), ("D1", "selected")]
