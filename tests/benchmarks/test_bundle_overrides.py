"""The benchmark runs each method through its bundle's configs: a value changed in the bundle (its config
file, or an override) is what the benchmark row runs with."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import torch

from monai_uda.benchmarks.runner import run_benchmark
from monai_uda.bundle import bundles_root
from monai_uda.cli import build_parser, _overrides


@pytest.fixture
def tiny_budget(monkeypatch):
    from monai_uda.benchmarks import runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)


def _bn_stats(path):
    state = torch.load(path, map_location="cpu", weights_only=True)
    return torch.cat([v.flatten() for k, v in state.items() if k.endswith("running_mean")])


def _row(out, method):
    df = pd.read_csv(out / "results.csv")
    return df[df.method == method].iloc[0]


def test_row_follows_a_benchmark_override(tmp_path, tiny_demo_2d, tiny_budget, one_thread):
    default = tmp_path / "default"
    run_benchmark(tiny_demo_2d, ["source", "bn"], str(default), mode="quick", progress=False)
    assert _row(default, "bn")["bn_mode"] == "ema"  # the bundle's adapt.json default: Algorithm 1
    changed = tmp_path / "changed"
    run_benchmark(tiny_demo_2d, ["source", "bn"], str(changed), mode="quick", progress=False,
                  overrides={"bn": {"mode": "ema", "alpha": 0.5}})
    row = _row(changed, "bn")
    assert row["bn_mode"] == "ema" and row["bn_alpha"] == 0.5
    # same source model (same seed), other statistics: the override reached the re-estimation itself
    assert torch.equal(_bn_stats(default / "seed0" / "source" / "model.pt"),
                       _bn_stats(changed / "seed0" / "source" / "model.pt"))
    assert not torch.allclose(_bn_stats(default / "seed0" / "bn" / "model.pt"),
                              _bn_stats(changed / "seed0" / "bn" / "model.pt"))
    assert "overrides {'bn': {'mode': 'ema', 'alpha': 0.5}}" in (changed / "results.md").read_text()
    # bn_reset: the same bundle in mode reset (the exact target statistics), beside Algorithm 1
    # bn_source: a control on the whole source training images (no target image), also mode reset
    run_benchmark(tiny_demo_2d, ["bn_reset", "bn_source"], str(default), mode="quick", progress=False, resume=True)
    assert _row(default, "bn_reset")["bn_mode"] == _row(default, "bn_source")["bn_mode"] == "reset"
    assert all((default / "seed0" / m / "model.pt").is_file() for m in ("bn", "bn_reset", "bn_source"))
    assert not list(default.rglob("*.validators.json"))  # the benchmark turns the bundles' validator record off...
    run_benchmark(tiny_demo_2d, ["bn"], str(tmp_path / "scored"), mode="quick", progress=False,
                  source_from=str(default), overrides={"bn": {"record_validators": ["entropy"]}})  # ...a user's is on
    rec = json.loads((tmp_path / "scored" / "seed0" / "bn" / "model.validators.json").read_text())
    assert rec["validators"] == ["entropy"] and list(rec["scores"]) == ["source", "adapted"]
    stats = {m: _bn_stats(default / "seed0" / m / "model.pt") for m in ("bn", "bn_reset", "bn_source")}
    assert not torch.allclose(stats["bn"], stats["bn_reset"]) and not torch.allclose(stats["bn_reset"], stats["bn_source"])
    from monai_uda.data import UDAData
    from monai_uda.methods.bn_reestimation.reestimation import reestimate_bn
    from monai_uda.networks import UDAUNet
    from monai_uda.transforms import segmentation_transforms

    uda = UDAData(tiny_demo_2d)
    tf = segmentation_transforms("target", uda=uda)

    def exact(key):  # the exact statistics of one split's whole images
        net = UDAUNet(spatial_dims=2, in_channels=1, out_channels=2)
        net.load_state_dict(torch.load(default / "seed0" / "source" / "model.pt", weights_only=True))
        reestimate_bn(net, [tf(it)["image"][None] for it in uda.split(key)], mode="reset", progress=False)
        return torch.cat([v.flatten() for k, v in net.state_dict().items() if k.endswith("running_mean")])

    src, tgt = exact("source_training"), exact("target_training")
    gap = lambda a, b: float((a - b).abs().max())  # noqa: E731
    assert gap(stats["bn_source"], src) < gap(stats["bn_source"], tgt) / 3  # from the source images
    assert gap(stats["bn_reset"], tgt) < gap(stats["bn_reset"], src) / 3  # from the target images



def test_a_nested_override_of_the_method_only_does_not_reach_the_evaluation(tmp_path, tiny_demo_2d, tiny_budget,
                                                                             one_thread):
    """``bn:target_dataset#data=...`` (re-estimate on source images) exists only in bn's adapt.json."""
    run_benchmark(tiny_demo_2d, ["source", "bn"], str(tmp_path / "a"), mode="quick", progress=False)
    run_benchmark(tiny_demo_2d, ["bn"], str(tmp_path / "b"), mode="quick", progress=False,
                  source_from=str(tmp_path / "a"),
                  overrides={"bn": {"target_dataset#data": "$@uda.split('source_training')"}})
    # the statistics came from the source images, and the row was evaluated like any other
    assert not torch.allclose(_bn_stats(tmp_path / "a" / "seed0" / "bn" / "model.pt"),
                              _bn_stats(tmp_path / "b" / "seed0" / "bn" / "model.pt"))
    assert 0 <= _row(tmp_path / "b", "bn")["dice"] <= 1

def test_row_follows_an_edited_bundle_config(tmp_path, tiny_demo_2d, tiny_budget, one_thread, monkeypatch):
    copy = tmp_path / "bundles"
    shutil.copytree(bundles_root(), copy, ignore=shutil.ignore_patterns("models", "eval", "demo_data"))
    cfg = copy / "bn_reestimation_segmentation" / "configs" / "adapt.json"
    config = json.loads(cfg.read_text())
    assert config["alpha"] != 0.25
    config.update(mode="ema", alpha=0.25)
    cfg.write_text(json.dumps(config, indent=4))
    monkeypatch.setenv("MONAI_UDA_BUNDLES", str(copy))
    out = tmp_path / "edited"
    run_benchmark(tiny_demo_2d, ["source", "bn"], str(out), mode="quick", progress=False)
    row = _row(out, "bn")
    assert row["bn_mode"] == "ema" and row["bn_alpha"] == 0.25


def test_unknown_method_in_overrides_is_refused(tmp_path, tiny_demo_2d):
    with pytest.raises(KeyError, match="nosuchmethod"):
        run_benchmark(tiny_demo_2d, ["source"], str(tmp_path), overrides={"nosuchmethod": {"x": 1}}, progress=False)


def test_cli_override_parsing():
    a = build_parser().parse_args(["benchmark", "--out", "x", "--override", "bn:mode=ema",
                                   "--override", "bn:alpha=0.2", "--override", "s2d:roi_size=[64, 64]"])
    assert _overrides(a.override) == {"bn": {"mode": "ema", "alpha": 0.2}, "s2d": {"roi_size": [64, 64]}}
    with pytest.raises(SystemExit):
        build_parser().parse_args(["benchmark", "--out", "x", "--override", "mode=ema"])


def test_budget_override_changes_the_rounds_run(tmp_path, tiny_demo_2d, one_thread, monkeypatch):
    """A budget override (BUDA-Seg's rounds) changes what the benchmark runs, not just the row's label."""
    from monai_uda.benchmarks import runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=2, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    default, changed = tmp_path / "default", tmp_path / "changed"
    run_benchmark(tiny_demo_2d, ["source", "buda"], str(default), mode="quick", progress=False)
    run_benchmark(tiny_demo_2d, ["source", "buda"], str(changed), mode="quick", progress=False,
                  overrides={"buda": {"num_rounds": 1}})
    assert _row(default, "buda")["rounds"] == 2 and _row(changed, "buda")["rounds"] == 1
    summaries = [json.loads((d / "seed0" / "buda" / "adapt_summary.json").read_text()) for d in (default, changed)]
    assert [len(s["train_history"]) for s in summaries] == [2, 1]
    weights = [torch.load(d / "seed0" / "buda" / "model.pt", map_location="cpu", weights_only=True)
               for d in (default, changed)]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_full_mode_leaves_training_lengths_to_the_bundles():
    """Full mode passes only the data shape; epochs, rounds and learning rates come from the bundle configs."""
    from monai_uda.benchmarks.methods import MethodContext
    from monai_uda.benchmarks.runner import budget_for

    for dims in (2, 3):
        b = budget_for("full", dims)
        assert not {"max_epochs", "epoch_length", "num_rounds", "learning_rate"} & set(b)
    assert "max_epochs" in budget_for("quick", 2)
    ctx = MethodContext("unused.json", "w", 0, budget_for("full", 2))
    ctx._uda = type("U", (), {"spatial_dims": 2})()
    assert "max_epochs" not in ctx.bundle_overrides("x")
