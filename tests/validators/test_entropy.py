import math

import pytest
import torch

from monai_uda.validators.entropy import entropy_score, information_maximization_score, pixel_entropy
from monai_uda.validators.predictions import Predictions


def _constant(p, shape=(4, 4)):
    return torch.tensor(p, dtype=torch.float32).view(-1, 1, 1).expand(-1, *shape).clone()


def test_known_softmax_gives_known_entropy():
    assert entropy_score([_constant([0.25] * 4)]) == pytest.approx(-math.log(4), abs=1e-6)
    assert entropy_score([_constant([1.0, 0.0])]) == 0.0
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert entropy_score(Predictions([_constant([0.25, 0.75]), _constant([0.75, 0.25], (2, 3))])) == pytest.approx(-h)
    assert pixel_entropy(_constant([0.25, 0.75]))[0, 0] == pytest.approx(h)


def test_every_pixel_counts_once():
    # 16 pixels at log 2 and 48 pixels at 0: mean entropy log(2) / 4, not the mean of the two image means
    small, large = _constant([0.5, 0.5], (4, 4)), _constant([1.0, 0.0], (8, 6))
    assert entropy_score([small, large]) == pytest.approx(-math.log(2) * 16 / 64)


def test_im_is_marginal_entropy_minus_mean_entropy():
    half = torch.zeros(2, 4, 4)
    half[0, :2], half[1, 2:] = 1, 1  # confident, half of the pixels each class
    assert information_maximization_score([half]) == pytest.approx(math.log(2))
    # the same soft prediction everywhere: the marginal is that prediction, so IM = 0
    assert information_maximization_score([_constant([0.25, 0.75])]) == pytest.approx(0.0, abs=1e-6)


def test_all_background_scores_worse_on_im_than_a_sensible_model_though_not_on_entropy():
    sensible = torch.zeros(2, 10, 10)
    sensible[1, 3:7, 3:7] = 0.95
    sensible[0] = 1 - sensible[1]
    background = _constant([1.0, 0.0], (10, 10))
    assert information_maximization_score([background]) == 0.0
    assert information_maximization_score([sensible]) > 0.2
    assert entropy_score([background]) > entropy_score([sensible])  # why entropy alone is not the default rule
