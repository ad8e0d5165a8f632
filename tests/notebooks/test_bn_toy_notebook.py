import os
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOTEBOOK = os.path.join(ROOT, "notebooks", "bn_toy_gaussian.ipynb")


def test_bn_toy_notebook_executes_and_adaptation_helps(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in nb.cells:  # run from a clean state
        if cell.cell_type == "code":
            cell.outputs = []
    t0 = time.time()
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    assert time.time() - t0 < 120
    text = "".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "stream"
    )
    line = [ln for ln in text.splitlines() if ln.startswith("TOY_OK")]
    assert line, text[-2000:]
    fields = dict(kv.split("=") for kv in line[0].split()[1:])
    assert float(fields["acc_after"]) > float(fields["acc_before"]) + 0.1
    assert float(fields["slope"]) < 0 and float(fields["r"]) < -0.5
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert images >= 2  # decision boundaries and the log-linear plot
