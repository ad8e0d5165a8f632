"""``selected`` in the benchmark runner: the label-free default rule's pick among a seed's models, evaluated."""

from __future__ import annotations

import json

import pandas as pd

from monai_uda.benchmarks.runner import run_benchmark
from monai_uda.validators import select


def test_selected_row_is_the_rules_pick_evaluated_like_the_others(tmp_path, tiny_demo_2d, one_thread, monkeypatch):
    from monai_uda.benchmarks import runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=2, batch_size=1, num_samples=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    df = run_benchmark(tiny_demo_2d, ["source", "oracle", "bn", "selected"], str(tmp_path), mode="quick",
                       progress=False)
    row = df[df.method == "selected"].iloc[0]
    scores = pd.read_csv(tmp_path / "seed0" / "selected" / "selection.csv", index_col="candidate")
    assert list(scores.index) == ["source", "bn"]  # the oracle (target labels) is never a candidate
    assert row.selected_method == select(scores)[0] and row.selection_candidates == 2
    picked = df[df.method == row.selected_method].iloc[0]
    assert row.dice == picked.dice and row.surface_dice == picked.surface_dice  # the same checkpoint, evaluated
    info = json.loads((tmp_path / "seed0" / "selected" / "selection.json").read_text())
    assert info["selected"] == row.selected_method and "oracle" in info["skipped"]
