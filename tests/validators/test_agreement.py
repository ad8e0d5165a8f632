import math

import pytest
import torch

from monai_uda.validators.agreement import consensus_score, foreground_dice, majority_vote, source_agreement_score
from monai_uda.validators.predictions import Predictions


def _square(r, c, n=4, shape=(12, 12), value=1):
    m = torch.zeros(shape, dtype=torch.long)
    m[r:r + n, c:c + n] = value
    return m


def _one_hot(label, num_classes=2):
    return torch.nn.functional.one_hot(label, num_classes).movedim(-1, 0).float()


def test_foreground_dice_known_values_and_conventions():
    a, b = _square(0, 0, 2), _square(0, 1, 2)  # 4 pixels each, 2 shared
    assert foreground_dice([a], [b], 2) == pytest.approx(0.5)
    assert foreground_dice([a], [a], 2) == 1.0
    assert foreground_dice([a, torch.zeros(3, 3)], [b, _square(0, 0, 1, (3, 3))], 2) == pytest.approx(4 / 9)  # pooled
    empty = torch.zeros(4, 4, dtype=torch.long)
    assert foreground_dice([empty], [empty], 2) == 0.0
    assert math.isnan(foreground_dice([empty], [empty], 2, empty=math.nan))
    three = a + 2 * _square(6, 6, 2)  # class 1 identical, class 2 missed, class 3 absent on both sides
    assert foreground_dice([three], [a], 4) == pytest.approx(0.5)
    mask = torch.zeros(12, 12, dtype=torch.bool)
    mask[:, :2] = True  # only the shared column pair counts
    assert foreground_dice([a], [b], 2, masks=[mask]) == pytest.approx(2 * 2 / (4 + 2))


def test_identical_models_agree_with_the_source_and_disjoint_ones_do_not():
    labels = [_square(2, 2), _square(5, 6)]
    same = Predictions([_one_hot(x) for x in labels], source_probabilities=[_one_hot(x) for x in labels])
    assert source_agreement_score(same) == 1.0
    moved = Predictions([_one_hot(torch.roll(x, 6, 1)) for x in labels],
                        source_probabilities=[_one_hot(x) for x in labels])
    assert source_agreement_score(moved) == 0.0
    with pytest.raises(ValueError, match="source_probabilities"):
        source_agreement_score(Predictions([_one_hot(x) for x in labels]))


def test_majority_vote_and_ties():
    maps = [torch.tensor([0, 1, 2, 1]), torch.tensor([1, 1, 2, 2]), torch.tensor([1, 0, 0, 0])]
    assert majority_vote(maps, 3).tolist() == [1, 1, 2, 0]  # last pixel: a 1-1-1 tie of three classes -> 0
    assert majority_vote(maps[:2], 3).tolist() == [0, 1, 2, 1]


def test_consensus_rewards_the_majority_and_penalises_the_outlier():
    truth, outlier = _square(2, 2), _square(2, 4)  # outlier overlaps half of the square
    agree = Predictions([_one_hot(truth)], others_argmax=[[truth], [outlier]])
    odd = Predictions([_one_hot(outlier)], others_argmax=[[truth], [truth]])
    assert consensus_score(agree) == 1.0
    assert consensus_score(odd) == pytest.approx(0.5)  # the vote is the square; 8 of 16 pixels shared
    with pytest.raises(ValueError, match="others_argmax"):
        consensus_score(Predictions([_one_hot(truth)]))
