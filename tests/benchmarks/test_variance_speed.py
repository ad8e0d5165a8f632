"""The BUDA-Seg speed benchmark on tiny shapes: every variant trains, the ratios come from measured numbers."""

from __future__ import annotations

import re

import pytest
import torch

from monai_uda.benchmarks import variance_speed
from monai_uda.benchmarks.variance_speed import VARIANTS, _make_step, run_interleaved


@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_step_updates_the_network(variant, monkeypatch):
    captured = {}
    real_adam = torch.optim.Adam

    def adam(params, **kw):
        params = list(params)
        captured["params"] = params
        return real_adam(params, **kw)

    monkeypatch.setattr(torch.optim, "Adam", adam)
    step = _make_step(variant, size=32, batch=2, device=torch.device("cpu"), classes=2, samples=2, dropout=0.1)
    before = [p.detach().clone() for p in captured["params"]]
    step()
    changed = [not torch.equal(b, p) for b, p in zip(before, captured["params"])]
    assert sum(changed) > len(changed) // 2


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="variant must be one of"):
        _make_step("bogus", 32, 2, torch.device("cpu"), 2, 2, 0.1)


def test_interleaved_times_every_variant():
    times = run_interleaved(size=32, batch=2, steps=2, warmup=1, device="cpu", classes=2, samples=2, dropout=0.1,
                            threads=1)
    assert set(times) == set(VARIANTS)
    assert all(t > 0 for t in times.values())


def test_main_prints_ratios_of_the_measured_numbers(capsys):
    out = variance_speed.main(["--size", "32", "--batch", "2", "--steps", "1", "--warmup", "1", "--samples", "2"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    m = re.fullmatch(r"time_vs_plain=([\d.]+) time_vs_mcdropout=([\d.]+) memory_vs_mcdropout=([\d.]+)", last)
    assert m, last
    res, ratios = out["results"], out["ratios"]
    assert ratios["time_vs_plain"] == pytest.approx(res["variational"]["time_s"] / res["plain"]["time_s"])
    assert float(m.group(1)) == pytest.approx(ratios["time_vs_plain"], abs=5e-4)
    assert float(m.group(2)) == pytest.approx(res["variational"]["time_s"] / res["mcdropout"]["time_s"], abs=5e-4)
    for v in VARIANTS:
        assert res[v]["peak_bytes"] >= 0 and res[v]["isolated_time_s"] > 0
