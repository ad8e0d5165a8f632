import math

import pytest
import torch

from monai_uda.networks import UDAUNet
from monai_uda.validators.dropout_disagreement import (disagreement_map, dropout_layers, ensemble_disagreement_score,
                                                       mc_dropout_score)

TINY = (4, 4, 4, 4, 4, 4)


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 16, 16, generator=g) for _ in range(2)]


def test_a_network_without_dropout_is_refused_in_one_line():
    net = UDAUNet(features=TINY)  # MONAI builds Dropout(p=0) layers: they do not count
    assert dropout_layers(net) == []
    with pytest.raises(ValueError) as e:
        mc_dropout_score(net, _images())
    assert "no dropout layer" in str(e.value) and "\n" not in str(e.value)


def test_mc_dropout_samples_disagree_with_batchnorm_frozen_and_modes_restored():
    torch.manual_seed(0)
    net = UDAUNet(features=TINY, dropout=0.5)
    net.train()
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in bn]
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    score = mc_dropout_score(net, _images(), num_samples=4)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random state is untouched
    assert math.isfinite(score) and score < 0
    assert all(torch.equal(m.running_mean, b) for m, b in zip(bn, before))  # BatchNorm stayed in eval
    assert all(m.training for m in net.modules())
    assert mc_dropout_score(net, _images(), num_samples=4) == score  # seeded
    variance = mc_dropout_score(net, _images(), num_samples=4, measure="variance")
    assert math.isfinite(variance) and variance < 0
    with pytest.raises(ValueError, match="measure 'std'"):
        mc_dropout_score(net, _images(), measure="std")


def test_known_disagreements():
    opposite = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(2, 2, 1, 1)  # two samples, two classes, one pixel
    assert disagreement_map(opposite)[0, 0] == pytest.approx(math.log(2))
    assert disagreement_map(opposite, "variance")[0, 0] == pytest.approx(0.25)
    same = opposite[:1].expand(3, -1, -1, -1)
    assert disagreement_map(same)[0, 0] == 0.0


def test_ensemble_of_identical_members_agrees_and_of_opposite_members_does_not():
    p = torch.softmax(torch.randn(2, 5, 5), 0)
    assert ensemble_disagreement_score([[p], [p.clone()], [p.clone()]]) == pytest.approx(0.0, abs=1e-6)
    hard = torch.nn.functional.one_hot(torch.randint(0, 2, (5, 5)), 2).movedim(-1, 0).float()
    assert ensemble_disagreement_score([[hard], [hard.flip(0)]]) == pytest.approx(-math.log(2))
    with pytest.raises(ValueError, match="at least 2"):
        ensemble_disagreement_score([[p]])
