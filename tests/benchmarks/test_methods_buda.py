"""The BUDA-Seg family through the benchmark runner (quick mode, monkeypatched tiny budget)."""

import math

import pandas as pd

from monai_uda.benchmarks.methods import METHODS, load_methods
from monai_uda.benchmarks.runner import run_benchmark


def test_buda_methods_registered():
    load_methods()
    assert {"buda", "selftrain", "mcdropout"} <= set(METHODS)


def test_quick_benchmark_buda_selftrain_mcdropout(tmp_path, tiny_demo_2d, monkeypatch):
    from monai_uda.benchmarks import runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=2, epoch_length=1, batch_size=1, num_samples=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    methods = ["source", "buda", "selftrain", "mcdropout"]
    run_benchmark(tiny_demo_2d, methods, str(tmp_path), mode="quick", progress=False)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv.method) == methods
    rows = csv.set_index("method")
    for m in methods[1:]:
        assert rows.loc[m, "rounds"] == 2 and rows.loc[m, "epochs"] == 2
        assert rows.loc[m, "adapt_seconds"] > 0
        assert math.isclose(rows.loc[m, "dice_loss"], 1.0 - rows.loc[m, "dice"], abs_tol=1e-9)
        assert 0.0 <= rows.loc[m, "iou"] <= 1.0
    # all three adapt the same shared source model
    assert (tmp_path / "seed0" / "source" / "model.pt").is_file()
    assert len(list((tmp_path / "seed0").glob("*/rounds/rounds_state.json"))) == 3
