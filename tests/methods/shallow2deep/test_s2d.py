import math

import numpy as np
import pytest
import torch
from monai.data import list_data_collate
from sklearn.ensemble import RandomForestClassifier
from torch import nn

from monai_uda.methods.shallow2deep.s2d import (
    PredictionEnhancer,
    Shallow2DeepLoss,
    as_forest_probability,
    consistency_loss,
    ema_update,
    enhancer_training_sample,
    make_teacher,
    rectification_weights,
    rectify,
    update_class_means,
)
from monai_uda.networks.unet import UDAUNet


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p))


class _Tiny(nn.Module):
    def __init__(self, w):
        super().__init__()
        self.lin = nn.Linear(1, 1, bias=False)
        self.bn = nn.BatchNorm1d(1)
        with torch.no_grad():
            self.lin.weight.fill_(w)


def test_ema_update_eq2():
    teacher, student = _Tiny(1.0), _Tiny(3.0)
    student.bn.running_mean.fill_(1.0)
    student.bn.num_batches_tracked.fill_(7)
    ema_update(teacher, student, alpha=0.9)
    assert teacher.lin.weight.item() == pytest.approx(0.9 * 1.0 + 0.1 * 3.0)  # theta_g <- a theta_g + (1-a) theta_f
    assert student.lin.weight.item() == 3.0  # the student is untouched
    assert teacher.bn.running_mean.item() == pytest.approx(0.1)
    assert teacher.bn.num_batches_tracked.item() == 7
    ema_update(teacher, student, alpha=0.9)
    assert teacher.lin.weight.item() == pytest.approx(0.9 * 1.2 + 0.1 * 3.0)
    t2 = make_teacher(student)
    assert not any(p.requires_grad for p in t2.parameters())
    ema_update(t2, _Tiny(0.0), alpha=0.999, buffers="none")
    assert t2.lin.weight.item() == pytest.approx(0.999 * 3.0)
    with pytest.raises(ValueError, match="different parameters"):
        ema_update(teacher, nn.Linear(1, 1))


P1 = [0.9, 0.6, 0.2, 0.1]
Y1 = [1.0, 0.8, 0.3, 0.0]


def test_rectification_eq6_to_8_hand_computed():
    p1, y1 = torch.tensor(P1), torch.tensor(Y1)
    eta = update_class_means(torch.tensor([0.5, 0.5]), p1, y1, lam=0.9)
    # S_1 = {0.9, 0.6} (y1 > 0.5), mean 0.75; S_0 = {p0 where y0 > 0.5} = {0.8, 0.9}, mean 0.85
    assert eta.tolist() == pytest.approx([0.9 * 0.5 + 0.1 * 0.85, 0.9 * 0.5 + 0.1 * 0.75])
    w0, w1 = rectification_weights(p1, eta)
    assert w1.tolist() == pytest.approx([0.625, 0.925, 0.675, 0.575])  # 1 - |p1 - 0.525|
    assert w0.tolist() == pytest.approx([0.565, 0.865, 0.735, 0.635])  # 1 - |(1 - p1) - 0.535|
    y0h, y1h = rectify(y1, w0, w1)
    assert y1h.tolist() == pytest.approx([0.625, 0.74, 0.2025, 0.0])
    assert y0h.tolist() == pytest.approx([0.0, 0.173, 0.5145, 0.635])
    # first batch without eta: starts at mean(S); an empty S keeps the value
    assert update_class_means(None, p1, y1).tolist() == pytest.approx([0.85, 0.75])
    kept = update_class_means(torch.tensor([0.3, 0.4]), p1, torch.zeros(4), lam=0.5)
    assert kept.tolist() == pytest.approx([0.5 * 0.3 + 0.5 * 0.55, 0.4])  # S_0 = all p0, mean 0.55; S_1 empty


def test_loss_module_bce_with_rectification_hand_computed():
    logits = _logit(P1).float().view(1, 1, 2, 2)
    y = torch.tensor(Y1).view(1, 1, 2, 2)
    loss = Shallow2DeepLoss("bce", consistency=False, rectification=True, lam=0.9, eta_init=(0.5, 0.5))
    val = loss(logits, y)
    y1h, y0h = [0.625, 0.74, 0.2025, 0.0], [0.0, 0.173, 0.5145, 0.635]
    expect = -sum(a * math.log(p) + b * math.log(1 - p) for a, b, p in zip(y1h, y0h, P1)) / 4
    assert val.item() == pytest.approx(expect, rel=1e-5)
    assert loss.eta.tolist() == pytest.approx([0.535, 0.525])
    plain = Shallow2DeepLoss("bce", consistency=False, rectification=False)(logits, y)
    expect_plain = -sum(t * math.log(p) + (1 - t) * math.log(1 - p) for t, p in zip(Y1, P1)) / 4
    assert plain.item() == pytest.approx(expect_plain, rel=1e-5)
    # two-channel (softmax) logits give the same result as the equivalent sigmoid logit
    two = torch.cat([torch.zeros_like(logits), logits], 1)
    assert Shallow2DeepLoss("bce", False, False)(two, y).item() == pytest.approx(plain.item(), rel=1e-5)


def test_consistency_eq3_eq4_and_teacher_is_target():
    s = _logit([0.8]).float().view(1, 1, 1, 1).requires_grad_(True)
    t = _logit([0.5]).float().view(1, 1, 1, 1).requires_grad_(True)
    bce = consistency_loss(s, t, "bce")
    assert bce.item() == pytest.approx(-(0.5 * math.log(0.8) + 0.5 * math.log(0.2)), rel=1e-5)
    bce.backward()
    assert s.grad is not None and t.grad is None  # no gradient into the mean teacher
    sd = _logit([0.999999, 1e-6]).float().view(1, 1, 1, 2)
    td = _logit([0.999999, 0.999999]).float().view(1, 1, 1, 2)
    assert consistency_loss(sd, td, "dice").item() == pytest.approx(1 - 2 / 3, abs=1e-4)  # 1 - 2*1/(1+2)
    full = Shallow2DeepLoss("dice", consistency=True, rectification=False)
    y = torch.ones(1, 1, 1, 2)
    total = full(sd, y, td)
    assert total.item() == pytest.approx((1 - 2 / 3) + (1 - 2 / 3), abs=1e-4)
    assert set(full.last_terms) == {"pseudo_label", "consistency"}
    with pytest.raises(ValueError, match="teacher_logits"):
        full(sd, y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Shallow2DeepLoss(consistency=False)(sd, 2 * y)


def _forest(n_features=3):
    rng = np.random.default_rng(0)
    x = rng.random((40, n_features))
    return RandomForestClassifier(n_estimators=3, random_state=0).fit(x, (x[:, 0] > 0.5).astype(int))


def test_enhancer_never_sees_raw_images():
    forests = [_forest(), _forest()]
    rng = np.random.default_rng(1)
    image = rng.random((1, 16, 16)).astype(np.float32)
    feats = rng.random((3, 16, 16)).astype(np.float32)
    label = np.zeros((16, 16))
    label[4:8, 4:8] = 1
    prob, lab = enhancer_training_sample(forests, feats, label, rng=0)
    assert prob.shape == lab.shape == (1, 16, 16) and prob.meta["s2d_input"] == "rf_foreground_probability"
    assert 0 <= prob.min() and prob.max() <= 1 and set(lab.unique().tolist()) == {0.0, 1.0}
    with pytest.raises(ValueError, match="F=3"):
        enhancer_training_sample(forests, image, label, rng=0)  # a raw image is not a feature stack

    enhancer = PredictionEnhancer(UDAUNet(in_channels=1, out_channels=1, features=(4, 4, 4, 4, 4, 4)))
    batch = list_data_collate([{"x": prob}, {"x": prob}])["x"]
    assert enhancer(batch).shape == (2, 1, 16, 16)
    enhancer.eval()  # single samples below: BatchNorm in eval mode
    with pytest.raises(ValueError, match="never raw images"):
        enhancer(torch.as_tensor(image)[None])  # raw image in [0, 1]: rejected by the tag
    with pytest.raises(ValueError, match="never raw images"):
        enhancer(torch.as_tensor(prob.as_tensor())[None])  # the tag is required
    relaxed = PredictionEnhancer(enhancer.network, require_tag=False)
    assert relaxed(prob.as_tensor()[None]).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        relaxed(255 * torch.as_tensor(image)[None])  # an 8-bit raw image
    with pytest.raises(ValueError, match="1 channel"):
        relaxed(torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="1 input channel"):
        PredictionEnhancer(UDAUNet(in_channels=2))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        as_forest_probability(torch.full((1, 4, 4), 3.0))
