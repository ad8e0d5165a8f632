"""Paired Wilcoxon test of a method against the source model on per-image Dice."""

import numpy as np
import pandas as pd
import pytest

from monai_uda.evaluation.significance import paired_differences, paired_test, significance_mark


def _table(source, method, seeds=(0,)):
    rows = []
    for s in seeds:
        for i, (a, b) in enumerate(zip(source, method)):
            rows += [{"method": "source", "seed": s, "name": f"img{i}", "dice": a},
                     {"method": "m", "seed": s, "name": f"img{i}", "dice": b}]
    return pd.DataFrame(rows)


def test_consistent_gain_is_significant_and_noise_is_not():
    rng = np.random.default_rng(0)
    src = rng.uniform(0.3, 0.6, 12)
    better = _table(src, src + 0.05 + rng.normal(0, 0.01, 12), seeds=(0, 1))
    r = paired_test(better, "m")
    assert r["n"] == 24 and r["mark"] == "+" and r["p"] < 0.001 and r["mean_diff"] == pytest.approx(0.05, abs=0.01)
    worse = _table(src, src - 0.05)
    assert paired_test(worse, "m")["mark"] == "-"
    noise = _table(src, src + rng.normal(0, 0.05, 12))
    assert paired_test(noise, "m")["mark"] == "="


def test_pairs_follow_seed_and_image_and_drop_missing_scores():
    t = _table([0.1, 0.2, np.nan], [0.3, 0.2, 0.5])
    t.loc[(t.method == "m") & (t.name == "img1"), "dice"] = 0.6
    assert sorted(paired_differences(t, "m")) == pytest.approx([0.2, 0.4])  # img2 has no source score


def test_too_few_pairs_or_identical_models_make_no_claim():
    assert paired_test(_table([0.1, 0.2], [0.9, 0.9]), "m")["mark"] == "?"
    same = _table([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert paired_test(same, "m") == {"n": 6, "mean_diff": 0.0, "p": 1.0, "mark": "="}
    assert significance_mark(-0.1, 0.2) == "=" and significance_mark(-0.1, 0.01) == "-"


def test_the_direction_is_the_tests_not_the_means():
    """Most images a little worse, two much better: the mean rises, the signed-rank test says worse."""
    src = np.linspace(0.3, 0.6, 20)
    method = src - 0.01
    method[:2] += 0.5  # two images gain 0.49 each: mean difference +0.040
    r = paired_test(_table(src, method), "m")
    assert r["mean_diff"] > 0 and r["p"] < 0.05 and r["mark"] == "-"
