"""Execute every notebook of ``notebooks/`` (except the BN toy one, tested on its own) top to bottom in TINY mode.

Each notebook runs in a fresh kernel whose working directory is the repository root, with
``MONAI_UDA_NB_TINY=1`` (tiny data and budgets) and ``MONAI_UDA_NB_OUT`` pointing at a temporary folder, so nothing
is written into the repository. A notebook passes when it finishes, shows at least the expected number of inline
PNG pictures and prints a ``NB_RESULT key=value ...`` line whose values are checked here. The notebooks on real pairs
skip when ``../shared/data`` (or ``$MONAI_UDA_DATA``) is absent.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
#: notebook -> (needs the real pairs, minimum number of image/png outputs)
EXPECTED = {
    "quickstart": (False, 3),
    "bundle_access": (False, 2),
    "bn_reestimation": (True, 3),
    "early_features": (True, 3),
    "buda_seg": (True, 3),
    "shallow2deep": (True, 3),
    "past": (True, 3),
}
CELL_TIMEOUT = 1200  # seconds per cell; the whole TINY set takes ~2.5 CPU minutes


def _run(name: str, monkeypatch, out: Path, data: Path | None = None, km=None):
    """Execute ``notebooks/<name>.ipynb`` in TINY mode; return (notebook, NB_RESULT fields, seconds)."""
    monkeypatch.setenv("MONAI_UDA_NB_TINY", "1")
    monkeypatch.setenv("MONAI_UDA_NB_OUT", str(out))
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if "OMP_NUM_THREADS" not in os.environ:  # one share of the cores per xdist worker (as tests/conftest.py does)
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        monkeypatch.setenv("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
    if data is not None:
        monkeypatch.setenv("MONAI_UDA_DATA", str(data))
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    t0 = time.time()
    nbclient.NotebookClient(nb, km=km, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(ROOT)}}).execute()
    seconds = time.time() - t0
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    lines = [ln for ln in text.splitlines() if ln.startswith("NB_RESULT ")]
    assert len(lines) == 1, f"{name}: expected one NB_RESULT line, got {lines}\n{text[-3000:]}"
    fields = dict(kv.split("=", 1) for kv in lines[0].split()[1:])
    assert fields["notebook"] == name
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= EXPECTED[name][1], f"{name}: {images} inline PNG outputs, expected >= {EXPECTED[name][1]}"
    print(f"{name}: {seconds:.1f} s, {images} pictures, {lines[0]}")
    return nb, fields, seconds


def _dice(fields: dict, key: str) -> float:
    v = float(fields[key])
    assert 0.0 <= v <= 1.0, f"{key}={v} is not a Dice"
    return v


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_is_stored_clean_with_a_tiny_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{name}.ipynb is stored with outputs"
    first = code[0]
    assert "parameters" in first.metadata.get("tags", []), "the first code cell must be tagged 'parameters'"
    assert "TINY" in first.source and "MONAI_UDA_NB_TINY" in first.source
    assert "MONAI_UDA_NB_OUT" in first.source  # outputs can be sent out of the repository


def test_quickstart(monkeypatch, tmp_path, ipc_kernel):
    from monai_uda.benchmarks.methods import load_methods

    _, f, _ = _run("quickstart", monkeypatch, tmp_path, km=ipc_kernel())
    registered = list(load_methods())
    # the table has every registered method (this process may have imported the plugins in another order)
    methods = f["methods"].split(",")
    assert sorted(methods) == sorted(registered) and methods[:2] == ["source", "oracle"]
    assert int(f["n_methods"]) == len(registered) >= 2
    for k in ("source_dice", "oracle_dice"):
        _dice(f, k)
    import pandas as pd

    bench = tmp_path / "quickstart_tiny" / "benchmark"
    df = pd.read_csv(bench / "results.csv")
    assert sorted(df.method) == sorted(registered) and df.dice.between(0, 1).all()
    assert (bench / "results.png").stat().st_size > 1000


def test_bundle_access(monkeypatch, tmp_path, ipc_kernel):
    _, f, _ = _run("bundle_access", monkeypatch, tmp_path, km=ipc_kernel())
    assert int(f["epochs"]) == 2 and int(f["iterations"]) == 4  # the max_epochs property override took effect
    for k in ("source_dice", "bn_dice"):
        _dice(f, k)
    assert int(f["segmentations"]) > 0
    assert (tmp_path / "bundle_access_tiny" / "source" / "model.pt").is_file()


def test_bn_reestimation(monkeypatch, tmp_path, ipc_kernel, shared_data):
    _, f, _ = _run("bn_reestimation", monkeypatch, tmp_path, shared_data, km=ipc_kernel())
    assert f["pair"] in ("A1", "B2")
    for k in ("source_dice", "bn_dice"):
        _dice(f, k)
    shift, before, after = float(f["shift_w2"]), float(f["w2_before"]), float(f["w2_after"])
    assert math.isfinite(shift) and shift > 0
    # after re-estimation the statistics each layer normalises with are the target's own
    assert 0 <= after < 1e-3 * before, (before, after)


def test_early_features(monkeypatch, tmp_path, ipc_kernel, shared_data):
    _, f, _ = _run("early_features", monkeypatch, tmp_path, shared_data, km=ipc_kernel())
    for k in ("source_dice", "early_dice"):
        _dice(f, k)
    assert 1 <= int(f["epochs"]) <= 2  # the quick budget caps refinement at 2 epochs
    assert 0.0 <= float(f["agreement_last"]) <= 1.0


def test_buda_seg(monkeypatch, tmp_path, ipc_kernel, shared_data):
    _, f, _ = _run("buda_seg", monkeypatch, tmp_path, shared_data, km=ipc_kernel())
    for k in ("source_dice", "buda_dice"):
        _dice(f, k)
    assert int(f["rounds"]) == 2  # min(3, max_epochs=2)
    vmin, vmax = float(f["variance_min"]), float(f["variance_max"])
    assert 0 < vmin <= vmax and math.isfinite(vmax)  # the variance map is positive and finite


def test_shallow2deep(monkeypatch, tmp_path, ipc_kernel, shared_data):
    _, f, _ = _run("shallow2deep", monkeypatch, tmp_path, shared_data, km=ipc_kernel())
    for k in ("source_dice", "rf_dice", "enhancer_dice", "s2d_dice"):
        _dice(f, k)
    assert f["simulated"] == "True" and int(f["scribble_pixels"]) > 0
    assert float(f["rf_dice"]) > 0  # a forest trained on a few hundred stroke pixels finds some mitochondria


def test_past(monkeypatch, tmp_path, ipc_kernel, shared_data):
    _, f, _ = _run("past", monkeypatch, tmp_path, shared_data, km=ipc_kernel())
    assert f["pair"] in ("C1", "D1")
    for k in ("source_dice", "translated_dice", "past_dice"):
        _dice(f, k)
    work = tmp_path / f"past_{f['pair']}_quick" / "past"
    assert (work / "translated" / "datalist.json").is_file() and (work / "self_train" / "model.pt").is_file()
