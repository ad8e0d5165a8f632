import os

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
    assert not csv.enhancer_validated.any()  # a cut budget trains its fixed epochs, without validation


def test_the_shared_forests_and_enhancer_are_built_again_at_another_enhancer_budget(tmp_path, tiny_demo_2d,
                                                                                     monkeypatch):
    """A seed's s2d_common folder is reused only while the enhancer's max_epochs stays the same (rows that were
    dropped as stale must not be rerun on the old enhancer)."""
    import json
    from types import SimpleNamespace

    from monai_uda import bundle
    from monai_uda.benchmarks import methods_s2d
    from monai_uda.benchmarks.methods import MethodContext

    calls = []

    def fake_run_bundle(name, config, workflow_type=None, **ov):
        calls.append(config)
        validated = ov.get("validate_during_training", True)
        history = os.path.splitext(ov["enhancer_file"])[0] + "_validation_history.csv"
        if config == "train_enhancer.json" and validated:  # the bundle's validation history: best at epoch 2
            os.makedirs(os.path.dirname(ov["enhancer_file"]), exist_ok=True)
            pd.DataFrame({"epoch": [1, 2, 3], "val_mean_dice": [0.1, 0.3, 0.2]}).to_csv(history, index=False)
        content = {"n_forests": 2, "max_epochs": methods_s2d.enhancer_epochs(ov), "target_forest_trees": 3,
                   "validate_during_training": validated, "history_file": history,
                   "train#trainer": SimpleNamespace(state=SimpleNamespace(epoch=3)),
                   "scribble_data": (None, {"simulated": True, "scribble_images": 1, "scribble_pixels": 5,
                                            "scribble_fg_pixels": 2})}
        return SimpleNamespace(parser=SimpleNamespace(get_parsed_content=content.__getitem__))

    monkeypatch.setattr(bundle, "run_bundle", fake_run_bundle)
    ctx = lambda **ov: MethodContext(tiny_demo_2d, str(tmp_path), 0, {}, overrides=ov)  # noqa: E731
    default = methods_s2d.enhancer_epochs({})
    with open(bundle.bundle_dir(methods_s2d.BUNDLE) / "configs" / "train_enhancer.json") as fh:
        assert default == json.load(fh)["max_epochs"]  # the bundle's own budget when nothing overrides it
    facts = methods_s2d.shallow2deep_common(ctx())
    assert facts["enhancer_epochs"] == default and facts["enhancer_validated"] is True
    assert (facts["enhancer_trained_epochs"], facts["enhancer_best_epoch"], facts["enhancer_val_dice"]) == (3, 2, 0.3)
    assert calls == ["prepare_forests.json", "train_enhancer.json", "adapt.json"]
    methods_s2d.shallow2deep_common(ctx())
    assert len(calls) == 3  # same budget: reused
    assert methods_s2d.shallow2deep_common(ctx(max_epochs=2 * default))["enhancer_epochs"] == 2 * default
    assert len(calls) == 6  # another budget: built again
    facts_file = tmp_path / "s2d_common" / "facts.json"
    facts = json.loads(facts_file.read_text())
    facts.pop("enhancer_epochs")  # a folder made before the facts recorded the budget: 24 epochs
    facts_file.write_text(json.dumps(facts))
    methods_s2d.shallow2deep_common(ctx(max_epochs=methods_s2d.UNRECORDED_ENHANCER_EPOCHS))
    assert len(calls) == 6
    facts = methods_s2d.shallow2deep_common(ctx(max_epochs=methods_s2d.UNRECORDED_ENHANCER_EPOCHS,
                                                 validate_during_training=False))
    assert len(calls) == 9 and facts["enhancer_validated"] is False  # without validation: built again
    assert "enhancer_best_epoch" not in facts


def test_a_pseudo_label_nets_override_does_not_reach_the_shared_enhancer(tmp_path, tiny_demo_2d, monkeypatch):
    """``--override s2d:max_epochs=24`` is the net's budget: the enhancer of ``train_enhancer.json`` reads the same key,
    so the shared stage takes only rf's and enhancer's overrides (a net's budget check once retrained the enhancer)."""
    from types import SimpleNamespace

    from monai_uda import bundle
    from monai_uda.benchmarks import methods_s2d
    from monai_uda.benchmarks.methods import MethodContext

    built = []

    def fake_run_bundle(name, config, workflow_type=None, **ov):
        if config == "train_enhancer.json":
            built.append(ov.get("max_epochs"))
        content = {"n_forests": 2, "max_epochs": methods_s2d.enhancer_epochs(ov), "target_forest_trees": 3,
                   "validate_during_training": False, "train#trainer": SimpleNamespace(state=SimpleNamespace(epoch=1)),
                   "scribble_data": (None, {"simulated": True, "scribble_images": 1, "scribble_pixels": 5,
                                            "scribble_fg_pixels": 2})}
        return SimpleNamespace(parser=SimpleNamespace(get_parsed_content=content.__getitem__))

    monkeypatch.setattr(bundle, "run_bundle", fake_run_bundle)
    default = methods_s2d.enhancer_epochs({})
    every = {"s2d": {"max_epochs": 3, "validate_during_training": False}, "enhancer": {"validate_during_training": False}}

    def ctx(method):
        return MethodContext(tiny_demo_2d, str(tmp_path), 0, {}, overrides=every.get(method, {}),
                             method_overrides=every)

    facts = methods_s2d.shallow2deep_common(ctx("s2d"))
    assert built == [None] and facts["enhancer_epochs"] == default  # the bundle's enhancer, not the net's 3 epochs
    methods_s2d.shallow2deep_common(ctx("enhancer"))
    assert len(built) == 1  # the enhancer's row finds the folder the net's row made: same stage
    every["enhancer"]["max_epochs"] = 2 * default
    assert methods_s2d.shallow2deep_common(ctx("s2d_norect"))["enhancer_epochs"] == 2 * default
    assert built == [None, 2 * default]  # the enhancer's override builds the stage, whichever row asks
    # a context made outside a benchmark run keeps its own overrides
    solo = MethodContext(tiny_demo_2d, str(tmp_path), 0, {}, overrides={"max_epochs": 3,
                                                                        "validate_during_training": False})
    assert methods_s2d.shallow2deep_common(solo)["enhancer_epochs"] == 3
