"""The early-feature family in the benchmark runner: ``early``, ``st`` and ``cbst`` on the tiny demo pair."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from monai_uda.benchmarks.methods import load_methods
from monai_uda.engines.self_training import split_epochs
from monai_uda.benchmarks.runner import run_benchmark


def test_registered():
    methods = load_methods()
    assert {"early", "st", "cbst"} <= set(methods)


def test_epochs_per_round():
    assert split_epochs(20, 3) == [7, 7, 6] and sum(split_epochs(20, 3)) == 20
    assert split_epochs(2, 2) == [1, 1]
    with pytest.raises(ValueError):
        split_epochs(1, 2)


def test_quick_benchmark_early_st_cbst(tmp_path, tiny_demo_2d, monkeypatch):
    from monai_uda.benchmarks import runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, batch_size=1, num_samples=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    run_benchmark(tiny_demo_2d, ["early", "st", "cbst"], str(tmp_path), mode="quick", progress=False)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv.method) == ["early", "st", "cbst"]
    assert csv[["dice", "surface_dice"]].notna().all().all()
    early = csv[csv.method == "early"].iloc[0]
    assert early.epochs == 1 and early.adapt_seconds >= 0 and early.head_seconds >= 0
    seed = tmp_path / "seed0"
    source = torch.load(seed / "source" / "model.pt", weights_only=True)
    adapted = torch.load(seed / "early" / "model.pt", weights_only=True)
    assert set(adapted) == set(source)
    # only the early stage's weights are refined; the default reestimate_bn "all" lets every BatchNorm
    # layer's running statistics follow the target, the affine weights after conv_0 stay the source's
    stats = ("running_mean", "running_var", "num_batches_tracked")
    assert all(torch.equal(adapted[k], source[k]) for k in source
               if not k.startswith("conv_0.") and not k.endswith(stats))
    assert any(not torch.equal(adapted[k], source[k]) for k in source if k.startswith("conv_0.") and "conv" in k)
    for mode in ("st", "cbst"):
        row = csv[csv.method == mode].iloc[0]
        assert row.rounds == 1 and 0.0 <= row.foreground_fraction <= 1.0
        state = json.loads((seed / mode / "rounds_state.json").read_text())
        assert state["completed"] == [0, 1]
        lab = np.asarray(nib.load(seed / mode / state["rounds"]["0"]["labels"][0]["label"]).dataobj)
        assert set(np.unique(lab)) <= {0, 1, 255} and (lab == 255).mean() > 0.3  # round 0 keeps ~20%
        tuned = torch.load(seed / mode / "round_1" / "model.pt", weights_only=True)
        assert any(not torch.equal(tuned[k], source[k]) for k in source if k.startswith("upcat_1."))  # whole net


def test_default_refinement_does_not_collapse_on_the_demo_pair(tmp_path, one_thread):
    """The embedded demo pair (a simulated scanner shift), its demo budget, seed 0: with the bundle's defaults
    (``reestimate_bn`` "all", no divergence guard) the refinement lifts the target Dice off the source model's,
    where the former defaults ("early" with the guard) left it where the source was (docs/methods/early_features.md)."""
    from monai_uda.data.demo import ensure_demo_datalist

    dl = ensure_demo_datalist(str(tmp_path / "data"), spatial_dims=2, seed=0)
    new = run_benchmark(dl, ["source", "early"], str(tmp_path / "new"), mode="demo", progress=False)
    old = run_benchmark(dl, ["early"], str(tmp_path / "old"), mode="demo", progress=False,
                        overrides={"early": {"reestimate_bn": "early", "restore_on_divergence": True}},
                        source_from=str(tmp_path / "new"))
    dice = dict(zip(new.method, new.dice))
    assert dice["early"] > dice["source"] + 0.01, dice
    assert dice["early"] > float(old.dice.iloc[0]) + 0.01, (dice, float(old.dice.iloc[0]))
