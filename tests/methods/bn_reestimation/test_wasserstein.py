import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from monai_uda.methods.bn_reestimation.reestimation import reestimate_bn
from monai_uda.methods.bn_reestimation.wasserstein import (
    FeatureMoments,
    GaussianStats,
    adaptation_distance,
    aggregate_distance,
    domain_shift_distance,
    feature_statistics,
    layerwise_distances,
    normalized_wasserstein2_squared,
    running_statistics,
    wasserstein2_squared,
)

D = torch.float64


def _rot(theta):
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, -s], [s, c]], dtype=D)


def test_eq2_and_eq5_one_dimensional_closed_form():
    # target N(1, 4), estimate N(0, 1): W2^2 = (2 - 1)^2 + (1 - 0)^2 = 2
    assert wasserstein2_squared([1.0], [4.0], [0.0], [1.0]) == pytest.approx(2.0)
    # Eq. 5: 1 + 1/4 - 2 * 1/2 + 1/4 = 0.5 = W2^2 / sigma_t^2
    assert normalized_wasserstein2_squared([1.0], [4.0], [0.0], [1.0], eps=0.0) == pytest.approx(0.5)
    # asymmetric: normalising by the other side gives (1 + 4 - 4 + 1) = 2
    assert normalized_wasserstein2_squared([0.0], [1.0], [1.0], [4.0], eps=0.0) == pytest.approx(2.0)
    # the default ridge (1e-6 of the target variance) barely moves it
    assert normalized_wasserstein2_squared([0.0], [1.0], [1.0], [4.0]) == pytest.approx(2.0, rel=1e-5)
    assert wasserstein2_squared([3.0], [2.0], [3.0], [2.0]) == pytest.approx(0.0, abs=1e-12)


def test_full_covariance_path_matches_rotated_diagonal_closed_form():
    # diagonal Gaussians: W2^2 = |dmu|^2 + sum (s_t - s_hat)^2 ; a common rotation leaves it unchanged
    mu_t, var_t = torch.tensor([1.0, -2.0], dtype=D), torch.tensor([4.0, 9.0], dtype=D)
    mu_h, var_h = torch.tensor([0.0, 0.0], dtype=D), torch.tensor([1.0, 16.0], dtype=D)
    expected = 1 + 4 + (2 - 1) ** 2 + (3 - 4) ** 2
    assert wasserstein2_squared(mu_t, var_t, mu_h, var_h) == pytest.approx(expected)
    r = _rot(0.7)
    full = wasserstein2_squared(r @ mu_t, r @ torch.diag(var_t) @ r.T, r @ mu_h, r @ torch.diag(var_h) @ r.T)
    assert full == pytest.approx(expected, rel=1e-6)
    # normalised: sum over channels of Eq. 5
    eq5 = sum(
        1 + vh / vt - 2 * math.sqrt(vh / vt) + (mt - mh) ** 2 / vt
        for mt, vt, mh, vh in zip(mu_t.tolist(), var_t.tolist(), mu_h.tolist(), var_h.tolist())
    )
    assert normalized_wasserstein2_squared(mu_t, var_t, mu_h, var_h, eps=0.0) == pytest.approx(eq5)
    full_n = normalized_wasserstein2_squared(r @ mu_t, r @ torch.diag(var_t) @ r.T, r @ mu_h, r @ torch.diag(var_h) @ r.T, eps=0.0)
    assert full_n == pytest.approx(eq5, rel=1e-9)


def test_monai_frechet_path_agrees_with_symmetric_form():
    from monai_uda.methods.bn_reestimation.wasserstein import _frechet_symmetric

    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(4, 4, generator=g, dtype=D), torch.randn(4, 2, generator=g, dtype=D)
    st, sh = a @ a.T, b @ b.T  # the second one is singular (rank 2)
    mt, mh = torch.randn(4, generator=g, dtype=D), torch.randn(4, generator=g, dtype=D)
    assert wasserstein2_squared(mt, st, mh, sh) == pytest.approx(_frechet_symmetric(mt, st, mh, sh), rel=1e-6)


def test_normalized_is_affine_invariant_and_isotropic_case():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 3, generator=g, dtype=D), torch.randn(3, 3, generator=g, dtype=D)
    st, sh = a @ a.T + torch.eye(3, dtype=D), b @ b.T + 0.1 * torch.eye(3, dtype=D)
    mt, mh = torch.randn(3, generator=g, dtype=D), torch.randn(3, generator=g, dtype=D)
    m, c = torch.randn(3, 3, generator=g, dtype=D) + 2 * torch.eye(3, dtype=D), torch.randn(3, generator=g, dtype=D)
    d1 = normalized_wasserstein2_squared(mt, st, mh, sh, eps=0.0)
    d2 = normalized_wasserstein2_squared(m @ mt + c, m @ st @ m.T, m @ mh + c, m @ sh @ m.T, eps=0.0)
    assert d1 > 0 and d2 == pytest.approx(d1, rel=1e-8)
    # isotropic target sigma^2 I: normalised = W2^2 / sigma^2
    s2 = 2.5
    d3 = normalized_wasserstein2_squared(mt, s2 * torch.eye(3, dtype=D), mh, sh, eps=0.0)
    assert d3 == pytest.approx(wasserstein2_squared(mt, s2 * torch.eye(3, dtype=D), mh, sh) / s2, rel=1e-5)


def test_feature_moments_exact_over_uneven_batches():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 3, 4, 5, generator=g, dtype=D) * torch.tensor([1.0, 3.0, 0.5], dtype=D)[:, None, None] + 7
    acc = FeatureMoments()
    for chunk in (x[:1], x[1:5], x[5:]):
        acc.update(chunk)
    obs = x.transpose(0, 1).reshape(3, -1).numpy()
    st = acc.stats()
    assert st.n == 9 * 20
    np.testing.assert_allclose(st.mean.numpy(), obs.mean(1), rtol=1e-12)
    np.testing.assert_allclose(st.cov.numpy(), np.cov(obs), rtol=1e-10, atol=1e-12)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)).eval()


def test_feature_statistics_hooks_read_bn_inputs_and_keep_model():
    net = _net()
    net.train()
    state = copy.deepcopy(net.state_dict())
    x = torch.rand(6, 1, 8, 8)
    stats = feature_statistics(net, [x[:4], {"image": x[4:]}], where="input")
    assert list(stats) == ["1", "4"] and net.training
    for k, v in state.items():
        assert torch.equal(v, net.state_dict()[k])
    z = net[0](x).detach().double().transpose(0, 1).reshape(3, -1).numpy()
    np.testing.assert_allclose(stats["1"].mean.numpy(), z.mean(1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["1"].cov.numpy(), np.cov(z), rtol=1e-4, atol=1e-7)


def test_reset_adapted_running_stats_match_true_target_moments():
    net = _net()
    target = [torch.rand(5, 1, 8, 8) * 3 + 2]
    truth = feature_statistics(net, target, ["1"])
    before = layerwise_distances(truth, running_statistics(net, ["1"]), covariance="diagonal")[0]["w2_normalized"]
    reestimate_bn(net, target, mode="reset", progress=False)
    after = layerwise_distances(truth, running_statistics(net, ["1"]), covariance="diagonal")[0]["w2_normalized"]
    assert before > 1.0 and after < 1e-8


def test_domain_shift_and_adaptation_distance():
    net = _net()
    g = torch.Generator().manual_seed(2)
    src = [torch.rand(4, 1, 8, 8, generator=g) for _ in range(2)]
    tgt = [torch.rand(4, 1, 8, 8, generator=g) * 4 + 1 for _ in range(2)]
    same = domain_shift_distance(net, src, src)
    assert all(r["w2_normalized"] == pytest.approx(0.0, abs=1e-8) for r in same)
    rows = domain_shift_distance(net, src, tgt)
    assert [r["layer"] for r in rows] == ["1", "4"] and rows[0]["channels"] == 3
    assert all(r["w2_normalized"] > 0.1 for r in rows)
    assert aggregate_distance(rows) == pytest.approx(np.mean([r["w2_normalized_per_channel"] for r in rows]))
    rev = domain_shift_distance(net, tgt, src)
    assert rev[0]["w2_normalized"] != pytest.approx(rows[0]["w2_normalized"], rel=1e-3)  # asymmetric
    assert rev[0]["w2"] == pytest.approx(rows[0]["w2"], rel=1e-6)  # Eq. 2 itself is symmetric
    adapted = reestimate_bn(copy.deepcopy(net), tgt, mode="reset", progress=False)
    d = adaptation_distance(adapted, copy.deepcopy(adapted), tgt)
    assert all(r["w2_normalized"] == pytest.approx(0.0, abs=1e-8) for r in d)
    d2 = adaptation_distance(net, adapted, tgt, ["4"])  # layer 4 inputs differ once layer 1 is adapted
    assert d2[0]["w2_normalized"] > 0.0


def test_errors():
    with pytest.raises(ValueError, match="channel"):
        wasserstein2_squared([0.0, 1.0], [1.0, 1.0], [0.0], [1.0])
    with pytest.raises(ValueError, match="covariance"):
        normalized_wasserstein2_squared([0.0, 1.0], torch.eye(3), [0.0, 1.0], torch.eye(2))
    with pytest.raises(ValueError, match="non-finite"):
        wasserstein2_squared([float("nan")], [1.0], [0.0], [1.0])
    t = {"a": GaussianStats(torch.zeros(2, dtype=D), torch.eye(2, dtype=D))}
    with pytest.raises(ValueError, match="channels"):
        layerwise_distances(t, {"a": GaussianStats(torch.zeros(3, dtype=D), torch.eye(3, dtype=D))})
    with pytest.raises(ValueError, match="no BatchNorm"):
        feature_statistics(nn.Conv2d(1, 1, 1), [torch.rand(1, 1, 2, 2)])
