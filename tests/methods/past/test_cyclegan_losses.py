import pytest
import torch

from monai_uda.methods.past.cyclegan_losses import CycleGANLoss, cycle_loss, identity_loss

ident = lambda x: x  # noqa: E731


def _const(v):
    return lambda x: torch.full((x.shape[0], 1, 4, 4), float(v))


def test_cycle_loss_near_zero_for_identity_generators():
    xs, xt = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16) * 3 + 1
    assert cycle_loss(ident, ident, xs, xt).item() < 1e-7
    assert identity_loss(ident, ident, xs, xt).item() < 1e-7
    g = torch.nn.Identity()
    assert cycle_loss(g, g, xs, xt).item() < 1e-7


def test_cycle_and_identity_hand_computed():
    xs, xt = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    up, down = (lambda x: x + 1), (lambda x: x - 1)  # inverse pair: zero cycle loss, identity loss 1 + 1
    assert cycle_loss(up, down, xs, xt).item() == pytest.approx(0.0, abs=1e-6)
    assert identity_loss(up, down, xs, xt).item() == pytest.approx(2.0)
    double = lambda x: 2 * x  # noqa: E731
    expected = (xs.abs().mean() + xt.abs().mean()).item()  # |2x - x| in both cycles
    assert cycle_loss(double, ident, xs, xt).item() == pytest.approx(expected, rel=1e-5)


def test_lsgan_discriminator_and_generator_terms():
    loss = CycleGANLoss(lambda_cycle=10, lambda_identity=5)
    real, fake = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    perfect = lambda x: torch.ones(x.shape[0], 1, 2, 2) if x is real else torch.zeros(x.shape[0], 1, 2, 2)  # noqa
    assert loss.discriminator_loss(perfect, real, fake).item() == pytest.approx(0.0)
    assert loss.discriminator_loss(_const(0.5), real, fake).item() == pytest.approx(0.25)  # 0.5 * (0.25 + 0.25)
    out = loss.generator_loss(ident, ident, _const(1), _const(1), real, fake)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-7)
    out = loss.generator_loss(ident, ident, _const(0), _const(0), real, fake)
    assert out["adv"].item() == pytest.approx(2.0) and out["loss"].item() == pytest.approx(2.0)
    up, down = (lambda x: x + 1), (lambda x: x - 1)
    no_adv = CycleGANLoss(lambda_cycle=10, lambda_identity=5, lambda_adv=0)
    out = no_adv.generator_loss(up, down, _const(1), _const(1), real, fake)
    assert out["identity"].item() == pytest.approx(2.0) and out["loss"].item() == pytest.approx(10.0)
    assert torch.allclose(out["fake_t"], real + 1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="lambda_cycle"):
        CycleGANLoss(lambda_cycle=-1)
    with pytest.raises(ValueError, match="shapes differ"):
        cycle_loss(lambda x: x[..., :4], ident, torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8))
