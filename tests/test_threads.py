"""Thread counts (monai_uda.threads): torch threads times data-loader processes within the cores (issue 20)."""

from __future__ import annotations

import pytest
import torch

from monai_uda import threads


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _cores(monkeypatch, n):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: n)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)


@pytest.mark.parametrize("cores, workers, expected", [(8, 0, 8), (8, 3, 2), (8, 7, 1), (2, 4, 1), (16, 1, 8)])
def test_threads_times_processes_within_the_cores(monkeypatch, cores, workers, expected):
    _cores(monkeypatch, cores)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    line = threads.configure_threads(num_workers=workers)
    assert torch.get_num_threads() == expected
    assert expected * (1 + workers) <= cores or expected == 1
    assert line.startswith(f"threads: torch {expected} ({cores} cores / (1 + {workers} loader workers))")


def test_affinity_limits_the_cores(monkeypatch):
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 64)
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert threads.available_cores() == 2


def test_omp_num_threads_is_respected(monkeypatch):
    _cores(monkeypatch, 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    line = threads.configure_threads(num_workers=3)
    assert torch.get_num_threads() == 3 and "(OMP_NUM_THREADS)" in line and "oversubscribed" in line


def test_explicit_threads_win_over_the_environment(monkeypatch):
    _cores(monkeypatch, 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    line = threads.configure_threads(num_workers=0, threads=2)
    assert torch.get_num_threads() == 2 and line == "threads: torch 2 (--threads), data-loader workers 0"
    with pytest.raises(ValueError, match="--threads"):
        threads.configure_threads(threads=0)


def test_unparsable_omp_num_threads_falls_back_to_the_cores(monkeypatch):
    _cores(monkeypatch, 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    threads.configure_threads(num_workers=1)
    assert torch.get_num_threads() == 2
