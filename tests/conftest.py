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


@pytest.fixture(scope="session")
def demo_models(tiny_demo_2d, tmp_path_factory):
    """Checkpoints on the tiny 2D demo pair. good.pt: a UDAUNet trained for 12 iterations on the demo's source images
    (white matter; source Dice about 0.8); broken.pt: the same weights with a final bias that forces background
    everywhere; zero.pt: every weight zero."""
    import torch
    from monai.losses import DiceCELoss

    from monai_uda.data import UDAData
    from monai_uda.networks import UDAUNet
    from monai_uda.transforms import segmentation_transforms

    uda = UDAData(tiny_demo_2d, deep=False)
    xform = segmentation_transforms("eval", uda=uda)
    items = [xform(it) for it in uda.split("source_training")]
    x = torch.stack([d["image"].as_tensor() for d in items])
    y = torch.stack([d["label"].as_tensor() for d in items]).long()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: the 2-core machine may be busy
    try:
        torch.manual_seed(0)
        net = UDAUNet(2, 1, 2)
        opt = torch.optim.Adam(net.parameters(), 1e-2)
        loss = DiceCELoss(to_onehot_y=True, softmax=True)
        net.train()
        for _ in range(12):
            opt.zero_grad()
            loss(net(x), y).backward()
            opt.step()
        for m in net.modules():  # exact BatchNorm statistics of the source images
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        with torch.no_grad():
            net(x)
    finally:
        torch.set_num_threads(threads)
    folder = tmp_path_factory.mktemp("models")
    good = net.state_dict()
    broken = {k: v.clone() for k, v in good.items()}
    broken["final_conv.bias"] = torch.tensor([20.0, -20.0])
    zero = {k: torch.zeros_like(v) if v.is_floating_point() else v for k, v in good.items()}
    paths = {}
    for name, state in (("good", good), ("broken", broken), ("zero", zero)):
        paths[name] = str(folder / f"{name}.pt")
        torch.save(state, paths[name])
    return paths


@pytest.fixture
def no_target_labels(tiny_demo_2d, monkeypatch):
    """Every image reader fails on a target label of the datalist; returns the files read (one entry per read: a
    reader that calls another, as ``LoadImage`` calls nibabel, records its file once) and the target images."""
    import json

    import monai.transforms
    import nibabel

    import monai_uda.data.datalist as datalist

    dl = json.load(open(tiny_demo_2d))
    base = os.path.dirname(tiny_demo_2d)
    forbidden = {os.path.normpath(os.path.join(base, it["label"]))
                 for key in ("target_test", "oracle_training", "oracle_validation") for it in dl.get(key, [])}
    assert forbidden
    opened: list[str] = []
    depth = [0]  # readers in progress: only the outermost records its file

    def guarded(real, path, *a, **k):
        for p in (path if isinstance(path, (list, tuple)) else [path]):
            p = os.path.normpath(os.fspath(p))
            if p in forbidden:
                raise AssertionError(f"a target label was opened: {p}")
            if not depth[0]:
                opened.append(p)
        depth[0] += 1
        try:
            return real(path, *a, **k)
        finally:
            depth[0] -= 1

    real_nib, real_read, real_call = nibabel.load, datalist.read_array, monai.transforms.LoadImage.__call__

    def nib_load(path, *a, **k):
        return guarded(real_nib, path, *a, **k)

    def read_array(path, *a, **k):
        return guarded(real_read, path, *a, **k)

    def load_image(self, filename, *a, **k):
        return guarded(lambda f, *a2, **k2: real_call(self, f, *a2, **k2), filename, *a, **k)

    monkeypatch.setattr(nibabel, "load", nib_load)
    monkeypatch.setattr(datalist, "read_array", read_array)
    monkeypatch.setattr(monai.transforms.LoadImage, "__call__", load_image)
    label = sorted(forbidden)[0]
    for read in (nibabel.load, datalist.read_array, monai.transforms.LoadImage(image_only=True)):
        with pytest.raises(AssertionError, match="a target label was opened"):  # the guards work
            read(label)
    opened.clear()
    targets = {os.path.normpath(os.path.join(base, it["image"])) for it in dl["target_training"]}
    return opened, targets
