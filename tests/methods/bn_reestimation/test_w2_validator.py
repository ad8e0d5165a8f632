"""w2_shift: the target-normalised W2 between a BatchNorm layer's target features and its stored statistics."""

from __future__ import annotations

import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from monai_uda.methods.bn_reestimation.w2_validator import NAME, target_feature_shift, w2_shift_score
from monai_uda.networks import UDAUNet
from monai_uda.validators import VALIDATORS, score_candidates
from monai_uda.validators.registry import get_validator, validator_needs


class ConvBN(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(3)
        self.head = torch.nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))))


def images(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [2.0 + 3.0 * torch.rand(1, 16, 16, generator=g) for _ in range(n)]


def target_moments(net, xs):
    with torch.no_grad():
        f = torch.cat([net.conv(x.unsqueeze(0)) for x in xs]).transpose(0, 1).reshape(3, -1).double()
    return f.mean(1), f.var(1, unbiased=True)


def test_registered_by_the_method_package_higher_is_better():
    assert NAME == "w2_shift" and get_validator("w2_shift") is VALIDATORS["w2_shift"]
    assert validator_needs("w2_shift") == {"network"}
    assert VALIDATORS["w2_shift"].__module__ == "monai_uda.methods.bn_reestimation.w2_validator"


def test_equals_eq5_per_channel_and_is_zero_when_the_stored_statistics_are_the_targets():
    net, xs = ConvBN(), images()
    mu, var = target_moments(net, xs)
    net.bn.running_mean.copy_(mu.float())
    net.bn.running_var.copy_(var.float())
    assert w2_shift_score(net, xs, eps=0.0) == pytest.approx(0.0, abs=1e-6)

    # stored statistics of another domain: Eq. (5) per channel, 1 + r - 2 sqrt(r) + (mu_t - mu_hat)^2 / var_t
    hat_mu, hat_var = mu + 2.0 * var.sqrt(), var * 4.0
    net.bn.running_mean.copy_(hat_mu.float())
    net.bn.running_var.copy_(hat_var.float())
    ratio = hat_var.float().double() / var
    expected = float((1 + ratio - 2 * ratio.sqrt() + (mu - hat_mu.float().double()) ** 2 / var).sum()) / 3
    assert expected == pytest.approx(5.0, rel=1e-3)  # 1 + 4 - 4 + 4 per channel
    assert w2_shift_score(net, xs, eps=0.0) == pytest.approx(-expected, rel=1e-5)
    rows = target_feature_shift(net, xs, eps=0.0)
    assert [r["layer"] for r in rows] == ["bn"] and rows[0]["channels"] == 3
    assert net.training  # run in eval mode, the flag restored; no hook left behind
    assert not net.bn._forward_pre_hooks


def test_a_network_closer_to_the_target_statistics_scores_higher_through_score_candidates():
    torch.manual_seed(0)
    source = UDAUNet(2, 1, 2, features=(4,) * 6)
    source.eval()
    adapted = UDAUNet(2, 1, 2, features=(4,) * 6)
    adapted.load_state_dict(source.state_dict())
    xs = images(3)
    adapted.train()
    for m in adapted.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the exact statistics of the pass
    with torch.no_grad():
        adapted(torch.stack(xs))  # BatchNorm statistics re-estimated on the target images
    df = score_candidates({"source": source, "adapted": adapted}, xs, validators=["w2_shift"], progress=False,
                          inferer=SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=1))
    assert df.loc["adapted", "w2_shift"] > -0.1 > df.loc["source", "w2_shift"]
    assert df.loc["source", "w2_shift"] < -1.0  # inputs of mean ~3.5 against stored statistics N(0, 1)
    assert all(math.isfinite(v) for v in df["w2_shift"])


def test_a_network_without_running_statistics_is_refused_in_one_line():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1))
    with pytest.raises(ValueError) as e:
        w2_shift_score(net, images(1))
    assert "w2_shift" in str(e.value) and "no norm layer" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not sub-modules"):
        w2_shift_score(ConvBN(), images(1), layers=["nope"])
