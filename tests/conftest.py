"""Shared fixtures: a tiny demo pair, the shared data root, and common skips."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MONAI_UDA_DATA", REPO.parent / "shared" / "data"))

TINY_SPLITS = {"source_training": 2, "source_validation": 1, "target_training": 1, "target_test": 1, "oracle_training": 1}


def pytest_configure(config):
    import torch

    # one thread per xdist worker (2 workers on 2 cores); all cores otherwise
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data folder (``../shared/data``); tests using it skip cleanly when it is absent."""
    if not (SHARED_DATA / "manifest.json").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_demo_2d(tmp_path_factory) -> str:
    """A tiny 2D demo pair (few subjects, 3 slices each) and its datalist path."""
    from monai_uda.data.demo import make_demo_pair

    return make_demo_pair(tmp_path_factory.mktemp("demo2d"), spatial_dims=2, slices_per_subject=3, splits=TINY_SPLITS)


@pytest.fixture(scope="session")
def tiny_demo_3d(tmp_path_factory) -> str:
    from monai_uda.data.demo import make_demo_pair

    return make_demo_pair(tmp_path_factory.mktemp("demo3d"), spatial_dims=3, splits=TINY_SPLITS)


@pytest.fixture(scope="session")
def verify_metadata():
    """``verify(bundle_name)``: runs MONAI's verify_metadata against the schema shipped in the package."""
    import subprocess
    import sys

    from monai_uda.bundle import bundle_dir

    schema = REPO / "monai_uda" / "schemas" / "meta_schema.json"

    def verify(name: str) -> None:
        meta = bundle_dir(name) / "configs" / "metadata.json"
        r = subprocess.run([sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta),
                            "--filepath", str(schema)], capture_output=True, text=True)
        assert r.returncode == 0 and "verified with no error" in r.stdout + r.stderr, r.stderr[-2000:]
        for f in ("LICENSE", "docs/README.md", "configs/logging.conf", "configs/inference.json"):
            assert (bundle_dir(name) / f).is_file(), f"{name}: {f} missing"

    return verify


@pytest.fixture
def killed_in_round(monkeypatch):
    """``killed_in_round(k)``: from now on the self-training engine's round ``k`` raises KeyboardInterrupt (a run
    killed there); ``killed_in_round(None)`` undoes it. For the resume tests of the round-based bundles."""
    from monai_uda.engines.self_training import RoundTrainer

    real_call = RoundTrainer.__call__

    def kill(k):
        def call(self, model, datalist, round_index):
            if round_index == k:
                raise KeyboardInterrupt(f"killed in round {k}")
            return real_call(self, model, datalist, round_index)

        monkeypatch.setattr(RoundTrainer, "__call__", real_call if k is None else call)

    return kill


@pytest.fixture
def one_thread():
    """One intra-op torch thread: OpenMP spinning makes tiny networks very slow on a shared 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def ipc_kernel():
    """``make()``: a Jupyter kernel manager on unix sockets in a private folder, for ``nbclient.NotebookClient(km=...)``.

    The default TCP transport picks "free" ports and binds them only when the kernel starts, so two xdist workers
    starting kernels at the same moment can be handed the same port (a rare ZMQ "Address already in use"). Unix
    sockets in a folder of this test's own cannot collide.
    """
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="nbk-")  # short: unix socket paths are limited to ~100 characters

    def make():
        from jupyter_client.manager import KernelManager

        return KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(folder, "kernel"))

    yield make
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def cli_process_state():
    """main() sets process-wide state for a command-line run: torch's thread count (monai_uda.threads), logger
    levels and an "ignore" warnings filter (cli._quiet_engines). Put the test process's back afterwards, so the
    tests that a worker runs after these ones see the same logging and warnings whatever the order."""
    import logging
    import warnings

    import torch

    n = torch.get_num_threads()
    from monai_uda.cli import _ENGINE_LOGGERS

    names = ("", *_ENGINE_LOGGERS, "monai_uda")
    saved = {name: (logging.getLogger(name).level, list(logging.getLogger(name).handlers),
                    logging.getLogger(name).propagate,
                    [h.level for h in logging.getLogger(name).handlers]) for name in names}
    with warnings.catch_warnings():  # restores the filters on exit
        yield
    torch.set_num_threads(n)
    logging.captureWarnings(False)
    for name, (level, handlers, propagate, handler_levels) in saved.items():
        logger = logging.getLogger(name)
        for h in logger.handlers:
            if h not in handlers:
                h.close()
        logger.setLevel(level)
        logger.handlers = handlers
        logger.propagate = propagate
        for h, hl in zip(handlers, handler_levels):
            h.setLevel(hl)
