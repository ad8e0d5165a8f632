import pandas as pd

from monai_uda.benchmarks.methods import METHODS, load_methods
from monai_uda.benchmarks.methods_s2d import s2d_sizes
from monai_uda.benchmarks.runner import run_benchmark

S2D = ["rf", "enhancer", "s2d", "s2d_noteacher", "s2d_norect"]


def test_registered_and_sizes():
    load_methods()
    assert set(S2D) <= set(METHODS)
    assert s2d_sizes({"max_epochs": 2, "epoch_length": 4}) == {"n_forests": 8, "forest_trees": 10, "target_forest_trees": 10}
    assert s2d_sizes({"max_epochs": 20, "epoch_length": 20})["n_forests"] == 100


def test_quick_benchmark_runs_all_s2d_methods(tmp_path, tiny_demo_2d, monkeypatch):
    from monai_uda.benchmarks import methods_s2d, runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, batch_size=1, num_samples=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    monkeypatch.setattr(methods_s2d, "s2d_sizes", lambda budget: {"n_forests": 2, "forest_trees": 2,
                                                                   "target_forest_trees": 3})
    run_benchmark(tiny_demo_2d, S2D, str(tmp_path), mode="quick", progress=False)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv.method) == S2D
    assert csv.dice.between(0, 1).all()
    assert (csv.scribble_pixels > 0).all() and csv.scribble_simulated.all()
    assert csv.scribble_pixels.nunique() == 1  # one scribble set and target forest shared by the five methods
    assert (csv.loc[csv.method.str.startswith("s2d"), "epochs"] == 1).all()
    assert csv.enhancer_train_s.notna().all() and csv.target_forest_fit_s.notna().all()
    assert (csv.enhancer_epochs == 1).all()  # each row records the enhancer budget it ran with (the quick cap)
