import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from monai_uda.methods.early_features.refinement import (
    EarlyHeadLoss,
    agreement_dice,
    early_refinement_loss,
    normalize_bn_mode,
    set_refinement_mode,
)
from monai_uda.methods.early_features.refinement_engine import create_early_refinement_trainer, one_shot_refinement
from monai_uda.methods.early_features.early_head import EarlyFeaturesSegmentor
from monai_uda.networks.unet import UDAUNet

FEATURES = (4, 4, 8, 8, 8, 4)


def _seg(dims=2, levels=(0,)):
    torch.manual_seed(0)
    net = UDAUNet(spatial_dims=dims, out_channels=2, features=FEATURES)
    return EarlyFeaturesSegmentor(net, levels=levels, hidden_channels=4)


def test_loss_equals_eq2_by_hand():
    torch.manual_seed(0)
    final, early = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    p = torch.softmax(final, 1)
    log_pt = torch.log_softmax(early, 1)
    expected = -(p * log_pt).sum(1).mean()  # -1/N_T sum_n sum_c p_c log p~_c
    assert torch.allclose(early_refinement_loss(final, early), expected, atol=1e-6)
    # two heads: the mean of the per-head losses
    early2 = torch.randn(2, 3, 4, 5)
    exp2 = (expected - (p * torch.log_softmax(early2, 1)).sum(1).mean()) / 2
    assert torch.allclose(early_refinement_loss(final, (early, early2)), exp2, atol=1e-6)
    # one hand-computed pixel: p = (0.5, 0.5), p~ = softmax(0, log 3) = (0.25, 0.75)
    f = torch.zeros(1, 2, 1, 1)
    e = torch.tensor([0.0, float(torch.log(torch.tensor(3.0)))]).reshape(1, 2, 1, 1)
    hand = -(0.5 * torch.log(torch.tensor(0.25)) + 0.5 * torch.log(torch.tensor(0.75)))
    assert torch.allclose(early_refinement_loss(f, e), hand, atol=1e-6)


def test_detach_pseudo_label():
    final = torch.randn(1, 2, 4, 4, requires_grad=True)
    early = torch.randn(1, 2, 4, 4, requires_grad=True)
    early_refinement_loss(final, early, detach_pseudo_label=True).backward()
    assert final.grad is None and early.grad is not None
    early_refinement_loss(final, early, detach_pseudo_label=False).backward()
    assert final.grad is not None and final.grad.abs().sum() > 0


def test_loss_rejects_bad_input():
    with pytest.raises(ValueError, match="early_logits"):
        early_refinement_loss(torch.randn(1, 2, 4, 4), torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="NaN"):
        early_refinement_loss(torch.full((1, 2, 4, 4), float("nan")), torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="reestimate_bn"):
        normalize_bn_mode("sometimes")


def test_head_loss_eq1():
    torch.manual_seed(0)
    final, early = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    label = (torch.rand(2, 1, 4, 4) > 0.5).float()
    log_p = torch.log_softmax(early, 1)
    expected = -log_p.gather(1, label.long()).mean()
    assert torch.allclose(EarlyHeadLoss()((final, early), label), expected, atol=1e-6)


def test_agreement_dice_hand_case():
    # final segmentation: foreground in 4 pixels; early: 2 of them + 2 others -> Dice = 2*2/(4+4) = 0.5
    final = torch.zeros(1, 2, 4, 4)
    final[0, 1, 0, :] = 5.0
    early = torch.zeros(1, 2, 4, 4)
    early[0, 1, 0, :2] = 5.0
    early[0, 1, 1, :2] = 5.0
    assert torch.allclose(agreement_dice(final, early), torch.tensor([0.5]))
    assert torch.allclose(agreement_dice(final, final), torch.tensor([1.0]))
    # both empty -> full agreement, not NaN
    empty = torch.zeros(1, 2, 4, 4)
    empty[0, 0] = 1.0
    assert torch.allclose(agreement_dice(empty, empty), torch.tensor([1.0]))


def _snapshot(seg):
    return {k: v.detach().clone() for k, v in seg.state_dict().items()}


def _run_refinement(seg, dims, **kw):
    torch.manual_seed(3)
    size = (2, 1) + (16,) * dims
    data = [{"image": torch.rand(size) * 2 + 0.5} for _ in range(2)]  # shifted "target" intensities
    trainer = create_early_refinement_trainer(seg, data, max_epochs=1, lr=1e-2, **kw)
    trainer.run()
    return trainer


@pytest.mark.parametrize("dims,levels,early", [(2, (0,), ("conv_0",)), (3, (0, 1), ("conv_0", "down_1"))])
@pytest.mark.parametrize("bn", ["early", "none"])
def test_only_early_layers_change(dims, levels, early, bn):
    seg = _seg(dims, levels)
    before = _snapshot(seg)
    trainer = _run_refinement(seg, dims, reestimate_bn=bn)
    assert trainer.state.iteration == 2
    prefixes = tuple(f"network.{n}." for n in early)
    changed = {k for k, v in seg.state_dict().items() if not torch.equal(v, before[k])}
    param_names = {k for k, _ in seg.named_parameters()}
    assert changed, "refinement did not update anything"
    # head, later stages and decoder: every parameter and buffer bit-identical
    assert all(k.startswith(prefixes) for k in changed), changed
    for n in early:  # every refined stage actually moved
        assert any(k.startswith(f"network.{n}.") and k in param_names for k in changed), n
    if bn == "none":  # no BatchNorm statistics re-estimated at all
        assert changed <= param_names
    else:  # "early": the early BatchNorm statistics follow the target
        assert any(k.endswith("running_mean") for k in changed)


def test_default_reestimates_every_batchnorm_but_updates_only_early_weights():
    seg = _seg(2)
    before = _snapshot(seg)
    _run_refinement(seg, 2)  # the default: reestimate_bn "all"
    params = dict(seg.named_parameters())
    changed = {k for k, v in seg.state_dict().items() if not torch.equal(v, before[k])}
    assert {k for k in changed if k in params} and all(k.startswith("network.conv_0.") for k in changed if k in params)
    later_stats = {k for k in changed if k.endswith("running_mean") and not k.startswith("network.conv_0.")}
    assert later_stats, "the deeper BatchNorm statistics did not follow the target batches"


@pytest.mark.parametrize("mode", ["early", "all"])
def test_reestimate_bn_modes(mode):
    seg = _seg(2)
    before = _snapshot(seg)
    _run_refinement(seg, 2, reestimate_bn=mode)
    param_names = {k for k, _ in seg.named_parameters()}
    changed = {k for k, v in seg.state_dict().items() if not torch.equal(v, before[k])}
    changed_params = {k for k in changed if k in param_names}
    changed_buffers = changed - param_names
    assert changed_params and all(k.startswith("network.conv_0.") for k in changed_params)
    assert any(k.startswith("network.conv_0.") and k.endswith("running_mean") for k in changed_buffers)
    late_buffers = {k for k in changed_buffers if not k.startswith("network.conv_0.")}
    assert bool(late_buffers) == (mode == "all")


def test_set_refinement_mode_flags():
    seg = _seg(2)
    set_refinement_mode(seg, "early")
    bn_train = {n for n, m in seg.named_modules() if isinstance(m, _BatchNorm) and m.training}
    assert bn_train and all(n.startswith("network.conv_0.") for n in bn_train)
    assert not seg.heads.training
    set_refinement_mode(seg, False)
    assert not any(m.training for m in seg.modules())


def test_trainer_missing_image_key():
    seg = _seg(2)
    with pytest.raises(KeyError, match="img"):
        create_early_refinement_trainer(seg, [{"image": torch.rand(1, 1, 16, 16)}], image_key="img").run()


def test_one_shot_refines_a_copy_and_predicts():
    seg = _seg(2)
    before = _snapshot(seg)
    torch.manual_seed(4)
    # a target "label" key with garbage must be ignored (target labels are never used)
    subject = [{"image": torch.rand(2, 1, 16, 16) + 1.0, "label": torch.full((2, 1, 3, 3), float("nan"))}]
    preds, model, epochs = one_shot_refinement(seg, subject, max_epochs=2, lr=1e-2)
    assert all(torch.equal(v, before[k]) for k, v in seg.state_dict().items())  # original untouched
    assert model is not seg and model.inference and 1 <= epochs <= 2
    assert len(preds) == 1 and isinstance(preds[0], torch.Tensor) and preds[0].shape == (2, 2, 16, 16)
    with torch.no_grad():
        assert torch.allclose(preds[0], model.network.eval()(subject[0]["image"]))
    assert not torch.equal(model.network.conv_0.conv_0.conv.weight, seg.network.conv_0.conv_0.conv.weight)
