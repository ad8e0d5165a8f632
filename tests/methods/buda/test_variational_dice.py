import numpy as np
import pytest
import torch
from monai.losses import DiceLoss

from monai_uda.methods.buda.variational_dice import VariationalSamplingDiceLoss, plain_dice_loss, squared_dice_loss
from monai_uda.networks.unet import UDAUNet
from monai_uda.methods.buda.variance_head import VarianceUNet


pytestmark = pytest.mark.usefixtures("one_thread")


def _hand_loss(o, v, eps, y_onehot, mask=None):
    """Eq. 1-3 written out with numpy loops: o, v (C, N) one image; eps (K, C, N); y_onehot (C, N)."""
    losses = []
    for k in range(eps.shape[0]):
        ohat = o + eps[k] * v  # Eq. 1
        p = np.exp(ohat) / np.exp(ohat).sum(0, keepdims=True)
        if mask is not None:
            p = p * mask
        per_class = []
        for c in range(o.shape[0]):
            num = 2 * sum(p[c, u] * y_onehot[c, u] for u in range(o.shape[1]))
            den = sum(p[c, u] ** 2 for u in range(o.shape[1])) + sum(y_onehot[c, u] ** 2 for u in range(o.shape[1]))
            per_class.append(1 - num / den)  # Eq. 2
        losses.append(np.mean(per_class))
    return np.mean(losses)  # Eq. 3


def test_equals_eq_1_to_3_hand_computed():
    o = np.array([[2.0, -1.0, 0.5], [0.0, 1.0, 0.5]])  # C=2 classes, 3 pixels
    v = np.array([[0.5, 1.0, 2.0], [0.1, 0.3, 1.5]])
    eps = np.array([[[1.0, -0.5, 0.2], [0.3, 0.0, -1.0]], [[-1.2, 0.7, 0.0], [2.0, -0.4, 0.9]]])  # K=2
    y = np.array([0, 1, 1])
    y1h = np.stack([y == 0, y == 1]).astype(float)
    expected = _hand_loss(o, v, eps, y1h)
    loss = VariationalSamplingDiceLoss(num_samples=2, smooth_nr=0.0, smooth_dr=0.0)
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    out = loss((t(o)[None, :, :, None], t(v)[None, :, :, None]), torch.tensor(y)[None, None, :, None],
               noise=t(eps)[:, None, :, :, None])
    assert out.item() == pytest.approx(expected, rel=1e-12)
    # first sample alone by hand: class 0 probs and Dice, as a numeric anchor
    ohat = o + eps[0] * v
    p0 = 1 / (1 + np.exp(ohat[1] - ohat[0]))
    d0 = 1 - 2 * p0[0] / ((p0**2).sum() + 1)
    d1 = 1 - 2 * (1 - p0)[1:].sum() / (((1 - p0) ** 2).sum() + 2)
    assert _hand_loss(o, v, eps[:1], y1h) == pytest.approx((d0 + d1) / 2)


def test_ignore_index_and_onehot_target():
    torch.manual_seed(0)
    o, v = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.rand(2, 3, 4, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, 4, 4))
    y[:, :, 0] = 255
    eps = torch.randn(3, 2, 3, 4, 4, dtype=torch.float64)
    loss = VariationalSamplingDiceLoss(num_samples=3, smooth_nr=0.0, smooth_dr=0.0, reduction="none")
    out = loss(o, y, variance=v, noise=eps)
    assert out.shape == (2, 3)
    for b in range(2):
        keep = (y[b, 0] != 255).numpy().reshape(-1)
        yy = y[b, 0].numpy().reshape(-1)
        y1h = np.stack([(yy == c) & keep for c in range(3)]).astype(float)
        exp = _hand_loss(o[b].reshape(3, -1).numpy(), v[b].reshape(3, -1).numpy(),
                         eps[:, b].reshape(3, 3, -1).numpy(), y1h, mask=keep[None].astype(float))
        assert out[b].mean().item() == pytest.approx(exp, rel=1e-10)
    # the same label given one-hot (ignored pixels all-zero) gives the same loss
    onehot = torch.stack([(y[:, 0] == c) for c in range(3)], 1).double()
    assert torch.allclose(loss(o, onehot, variance=v, noise=eps), out)


def test_zero_variance_is_monai_squared_dice():
    """Eq. 2 == MONAI DiceLoss(squared_pred=True, softmax=True): the no-variance ablation reuses it."""
    torch.manual_seed(1)
    o = torch.randn(2, 5, 8, 8)
    y = torch.randint(0, 5, (2, 1, 8, 8))
    monai = DiceLoss(to_onehot_y=True, softmax=True, squared_pred=True)(o, y)
    ours = VariationalSamplingDiceLoss(num_samples=4)(o, y, variance=torch.zeros_like(o))
    assert ours.item() == pytest.approx(monai.item(), rel=1e-5)
    assert plain_dice_loss()(o, y).item() == pytest.approx(monai.item(), rel=1e-6)
    assert VariationalSamplingDiceLoss()(o, y).item() == pytest.approx(monai.item(), rel=1e-5)  # no V at all
    # batch=True: one Dice per class over the whole batch, as MONAI's batch=True
    b = DiceLoss(to_onehot_y=True, softmax=True, squared_pred=True, batch=True)(o, y)
    assert VariationalSamplingDiceLoss(batch=True)(o, y).item() == pytest.approx(b.item(), rel=1e-5)


def test_noise_changes_loss_and_reproducible_with_generator():
    torch.manual_seed(0)
    o, v = torch.randn(1, 2, 8, 8), torch.full((1, 2, 8, 8), 2.0)
    y = torch.randint(0, 2, (1, 1, 8, 8))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = VariationalSamplingDiceLoss(4, generator=g1)(o, y, variance=v)
    b = VariationalSamplingDiceLoss(4, generator=g2)(o, y, variance=v)
    assert a.item() == b.item()
    assert a.item() != pytest.approx(VariationalSamplingDiceLoss(4)(o, y).item(), abs=1e-4)


def test_gradients_reach_logits_variance_and_head():
    torch.manual_seed(0)
    net = VarianceUNet(UDAUNet(spatial_dims=2, out_channels=3, features=(4, 4, 4, 4, 4, 4)))
    x = torch.randn(2, 1, 16, 16)
    o, v = net(x)
    o.retain_grad()
    v.retain_grad()
    loss = VariationalSamplingDiceLoss(num_samples=4)((o, v), torch.randint(0, 3, (2, 1, 16, 16)))
    loss.backward()
    assert o.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    assert net.variance_conv.weight.grad.abs().sum() > 0
    assert net.network.final_conv.weight.grad.abs().sum() > 0


def test_k_samples_need_one_forward_pass():
    net = VarianceUNet(UDAUNet(spatial_dims=2, out_channels=2, features=(4, 4, 4, 4, 4, 4)))
    calls = []
    h = net.network.register_forward_hook(lambda *a: calls.append(1))
    out = net(torch.randn(2, 1, 16, 16))
    VariationalSamplingDiceLoss(num_samples=16)(out, torch.zeros(2, 1, 16, 16, dtype=torch.long)).backward()
    h.remove()
    assert len(calls) == 1


def test_bad_inputs():
    o = torch.randn(1, 2, 4, 4)
    y = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    loss = VariationalSamplingDiceLoss(2)
    with pytest.raises(ValueError, match="variance"):
        loss(o, y, variance=-torch.ones_like(o))
    with pytest.raises(ValueError, match="variance"):
        loss(o, y, variance=torch.full_like(o, float("nan")))
    with pytest.raises(ValueError, match="shape"):
        loss(o, y, variance=torch.ones(1, 2, 4, 5))
    with pytest.raises(ValueError, match="outside"):
        loss(o, torch.full((1, 1, 4, 4), 7))
    with pytest.raises(ValueError, match="channels"):
        loss(o, torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="num_samples"):
        VariationalSamplingDiceLoss(0)
    with pytest.raises(ValueError, match="samples"):
        loss(o, y, variance=torch.ones_like(o), noise=torch.zeros(3, 1, 2, 4, 4))


def test_squared_dice_loss_broadcasts_over_k():
    p = torch.rand(3, 2, 2, 5, 5)
    p = p / p.sum(2, keepdim=True)
    y = torch.zeros(2, 2, 5, 5)
    y[:, 0, :2] = 1
    y[:, 1, 2:] = 1
    full = squared_dice_loss(p, y)
    assert full.shape == (3, 2, 2)
    for k in range(3):
        assert torch.allclose(full[k], squared_dice_loss(p[k], y))


def test_seeded_noise_leaves_the_global_random_stream_alone():
    """ε from the loss's own stream: drawing it does not move the global RNG (data order, crops, augmentation)."""
    o, v = torch.randn(2, 2, 8, 8), torch.full((2, 2, 8, 8), 2.0)
    y = torch.randint(0, 2, (2, 1, 8, 8))
    torch.manual_seed(5)
    untouched = torch.rand(4)
    torch.manual_seed(5)
    loss = VariationalSamplingDiceLoss(4, seed=7)
    a = loss(o, y, variance=v)
    assert torch.equal(torch.rand(4), untouched)
    b = loss(o, y, variance=v)
    assert a.item() != b.item()  # the stream moves on between draws
    loss.set_random_state(7)  # and restarts from the seed (what the self-training engine does each round)
    assert loss(o, y, variance=v).item() == a.item()
    assert VariationalSamplingDiceLoss(4, seed=8)(o, y, variance=v).item() != a.item()
    torch.manual_seed(5)
    VariationalSamplingDiceLoss(4)(o, y, variance=v)  # without a seed ε comes from the global stream
    assert not torch.equal(torch.rand(4), untouched)
