"""Thread counts: torch intra-op threads times data-loader processes never above the cores.

torch (and the OpenMP runtime under it) starts one thread per core in every process, and each data-loader
worker is another process: on a shared or small machine a run then oversubscribes the cores and can be many
times slower. :func:`configure_threads` picks ``threads`` so that ``threads * (1 + num_workers) <= cores``,
unless the user chose: an explicit ``threads`` argument (``--threads``) wins, then ``OMP_NUM_THREADS`` (which
torch already read at start-up and which is left as it is). It returns one line for the run's first output.
"""

from __future__ import annotations

import os

__all__ = ["configure_threads", "available_cores"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells, else ``os.cpu_count()``)."""
    count = os.cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        try:
            count = min(count, len(os.sched_getaffinity(0)))
        except OSError:
            pass
    return max(1, int(count))


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    try:
        n = int(value.split(",")[0])
    except ValueError:
        return None
    return n if n > 0 else None


def configure_threads(num_workers: int = 0, threads: int | None = None) -> str:
    """Set ``torch.set_num_threads`` for a run with ``num_workers`` data-loader processes; returns one line.

    Args:
        num_workers: data-loader worker processes the run starts (each runs its transforms on one thread).
        threads: the user's choice (``--threads``); taken as it is. None: ``OMP_NUM_THREADS`` if set, else
            ``max(1, cores // (1 + num_workers))``.

    Raises:
        ValueError: ``threads`` or ``num_workers`` is negative or ``threads`` is 0.
    """
    import torch

    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    cores = available_cores()
    env = _env_threads()
    if threads is not None:
        n, why = int(threads), "--threads"
    elif env is not None:
        n, why = env, "OMP_NUM_THREADS"
    else:
        n, why = max(1, cores // (1 + int(num_workers))), f"{cores} cores / (1 + {num_workers} loader workers)"
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    line = f"threads: torch {n} ({why}), data-loader workers {num_workers}"
    if n * (1 + num_workers) > cores:
        line += f"; {n * (1 + num_workers)} threads on {cores} cores is oversubscribed"
    return line
