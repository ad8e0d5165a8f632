import math

import numpy as np
import pytest
import torch

from monai_uda.evaluation.uncertainty import error_detection, softmax_entropy


def test_an_uncertainty_that_marks_every_error_scores_one_and_chance_scores_a_half():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, size=(4, 32, 32))
    pred = label.copy()
    wrong = rng.random(label.shape) < 0.2
    pred[wrong] = 1 - pred[wrong]
    perfect = wrong.astype(float) + 0.01 * rng.random(label.shape)  # every error above every right pixel
    r = error_detection(perfect, pred, label)
    assert r["auroc"] == pytest.approx(1.0) and r["error_rate"] == pytest.approx(wrong.mean())
    assert r["bin_error_rate"][0] == 0.0 and r["bin_error_rate"][-1] == 1.0  # the top decile is all errors
    chance = error_detection(rng.random(label.shape), pred, label)
    assert chance["auroc"] == pytest.approx(0.5, abs=0.03)
    assert max(chance["bin_error_rate"]) - min(chance["bin_error_rate"]) < 0.1
    inverted = error_detection(-perfect, pred, label)
    assert inverted["auroc"] == pytest.approx(0.0)


def test_no_error_gives_no_auroc_and_shapes_are_checked():
    label = np.zeros((8, 8), dtype=int)
    r = error_detection(np.random.rand(8, 8), label, label)
    assert math.isnan(r["auroc"]) and r["error_rate"] == 0.0
    with pytest.raises(ValueError, match="as many pixels"):
        error_detection(np.zeros(10), np.zeros(9), np.zeros(9))


def test_subsampling_keeps_the_answer():
    rng = np.random.default_rng(1)
    label = rng.integers(0, 2, size=200_000)
    pred = np.where(rng.random(label.size) < 0.3, 1 - label, label)
    u = (pred != label) + rng.normal(0, 0.8, size=label.size)
    full = error_detection(u, pred, label, max_pixels=None)
    sub = error_detection(u, pred, label, max_pixels=20_000)
    assert sub["pixels"] == 20_000 and sub["auroc"] == pytest.approx(full["auroc"], abs=0.02)


def test_softmax_entropy():
    logits = torch.tensor([[[0.0]], [[0.0]]]).unsqueeze(0)  # (1, 2, 1, 1): uniform over two classes
    assert softmax_entropy(logits).item() == pytest.approx(math.log(2))
    sure = torch.tensor([[[50.0]], [[-50.0]]]).unsqueeze(0)
    assert softmax_entropy(sure).item() == pytest.approx(0.0, abs=1e-6)
