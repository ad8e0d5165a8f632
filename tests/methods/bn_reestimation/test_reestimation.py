import copy

import numpy as np
import pytest
import torch
from torch import nn

from monai_uda.methods.bn_reestimation.reestimation import list_norm_layers, reestimate_bn
from monai_uda.networks.unet import UDAUNet

TINY = (4, 4, 4, 4, 4, 4)


def _tiny_unet(dims=2, seed=0):
    torch.manual_seed(seed)
    net = UDAUNet(spatial_dims=dims, in_channels=1, out_channels=2, features=TINY)
    # non-trivial source statistics and affine parameters
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm3d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def _conv_bn(dims=2, norm="batch"):
    torch.manual_seed(1)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    if norm == "batch":
        bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
        n1, n2 = bn(3), bn(2)
    else:
        inorm = {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dims]
        n1, n2 = inorm(3, affine=True, track_running_stats=True), inorm(2, affine=True, track_running_stats=True)
    return nn.Sequential(conv(1, 3, 3), n1, nn.ReLU(), conv(3, 2, 1), n2).eval()


@pytest.mark.parametrize("mode", ["ema", "reset"])
def test_weights_bit_identical_and_stats_changed(mode):
    net = _tiny_unet()
    before = copy.deepcopy(net.state_dict())
    data = [torch.rand(3, 1, 16, 16) * 5 + 2 for _ in range(2)]
    out = reestimate_bn(net, data, mode=mode, alpha=0.3, progress=False)
    assert out is net and not net.training
    after = net.state_dict()
    stats_changed = 0
    for k, v in before.items():
        if k.endswith(("running_mean", "running_var", "num_batches_tracked")):
            stats_changed += int(not torch.equal(v, after[k]))
        else:
            assert torch.equal(v, after[k]), f"learned tensor {k} changed"
    assert stats_changed > 0
    assert all(not p.requires_grad for p in net.parameters())


@pytest.mark.parametrize("unbiased", [True, False])
def test_reset_equals_exact_population_moments_over_uneven_batches(unbiased):
    net = _conv_bn()
    x = torch.randn(11, 1, 7, 6, dtype=torch.float32) * 3 + 1.5
    batches = [x[:2], x[2:7], x[7:]]  # uneven sizes: the mean of batch variances would be wrong
    ref = copy.deepcopy(net)
    reestimate_bn(net, batches, mode="reset", unbiased=unbiased, progress=False)
    z = ref[0](x).detach().double().numpy()  # inputs of the first BN: frozen conv only
    zz = np.moveaxis(z, 1, 0).reshape(3, -1)
    np.testing.assert_allclose(net[1].running_mean.numpy(), zz.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net[1].running_var.numpy(), zz.var(1, ddof=1 if unbiased else 0), rtol=1e-5)
    # the mean of per-batch variances differs from the population variance (guards the test itself)
    naive = np.mean([np.moveaxis(ref[0](b).detach().numpy(), 1, 0).reshape(3, -1).var(1, ddof=1) for b in batches], 0)
    assert not np.allclose(naive, zz.var(1, ddof=1), rtol=1e-3)
    assert int(net[1].num_batches_tracked) == 3


def test_reset_single_batch_is_self_consistent_for_every_layer():
    net = _tiny_unet()
    x = torch.rand(4, 1, 16, 16) * 3
    # unbiased=False stores the variance that training-mode BN normalised with, so the adapted
    # network sees in eval mode exactly the inputs whose moments were stored
    reestimate_bn(net, [x], mode="reset", unbiased=False, progress=False)
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: seen.__setitem__(n, inp[0].double())) for n, m in list_norm_layers(net)]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    for n, m in list_norm_layers(net):
        z = seen[n]
        np.testing.assert_allclose(m.running_mean.numpy(), z.mean((0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5, err_msg=n)
        np.testing.assert_allclose(m.running_var.numpy(), z.var((0, 2, 3), unbiased=False).numpy(), rtol=1e-4, atol=1e-6, err_msg=n)


def test_alpha_update_matches_algorithm_1_by_hand():
    bn = nn.BatchNorm1d(1)
    bn.running_mean.fill_(2.0)
    bn.running_var.fill_(3.0)
    net = nn.Sequential(bn).eval()
    batches = [torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [4.0], [8.0]])]
    # batch 1: mean 2, unbiased var 2; batch 2: mean 4, unbiased var 16
    # i=1: mu = .5*2 + .5*2 = 2,  var = .5*3 + .5*2 = 2.5
    # i=2: mu = .5*2 + .5*4 = 3,  var = .5*2.5 + .5*16 = 9.25
    reestimate_bn(copy.deepcopy(net), batches, alpha=0.5, progress=False)
    out = reestimate_bn(net, batches, alpha=0.5, progress=False)
    assert out[0].running_mean.item() == pytest.approx(3.0)
    assert out[0].running_var.item() == pytest.approx(9.25)
    # second pass continues the recursion: (2.5, 5.625) then (3.25, 10.8125)
    net2 = nn.Sequential(nn.BatchNorm1d(1)).eval()
    net2[0].running_mean.fill_(2.0)
    net2[0].running_var.fill_(3.0)
    reestimate_bn(net2, batches, alpha=0.5, passes=2, progress=False)
    assert net2[0].running_mean.item() == pytest.approx(3.25)
    assert net2[0].running_var.item() == pytest.approx(10.8125)
    # biased batch variances (1, 32/3): var = .5*(.5*3 + .5*1) + .5*32/3
    net3 = nn.Sequential(nn.BatchNorm1d(1)).eval()
    net3[0].running_mean.fill_(2.0)
    net3[0].running_var.fill_(3.0)
    reestimate_bn(net3, batches, alpha=0.5, unbiased=False, progress=False)
    assert net3[0].running_var.item() == pytest.approx(0.5 * 2.0 + 0.5 * 32.0 / 3.0)


def test_alpha_equals_pytorch_momentum_on_first_layer():
    net = _conv_bn()
    batches = [torch.randn(3, 1, 6, 6) + i for i in range(3)]
    torch_net = copy.deepcopy(net)
    torch_net[1].momentum = 0.2
    torch_net[1].train()
    with torch.no_grad():
        for b in batches:
            torch_net[:2](b)
    reestimate_bn(net, batches, alpha=0.2, progress=False)
    torch.testing.assert_close(net[1].running_mean, torch_net[1].running_mean)
    torch.testing.assert_close(net[1].running_var, torch_net[1].running_var)


def test_first_n_layers_only_touch_n_layers_in_forward_order():
    net = _tiny_unet()
    before = copy.deepcopy(net.state_dict())
    order = [n for n, _ in list_norm_layers(net, torch.zeros(1, 1, 16, 16))]
    reestimate_bn(net, [torch.rand(2, 1, 16, 16) * 4 + 3], layers=3, mode="reset", progress=False)
    after = net.state_dict()
    changed = [n for n in order if not torch.equal(before[n + ".running_mean"], after[n + ".running_mean"])]
    assert changed == order[:3]
    for n in order[3:]:
        assert torch.equal(before[n + ".running_var"], after[n + ".running_var"])
        assert torch.equal(before[n + ".num_batches_tracked"], after[n + ".num_batches_tracked"])


def test_list_norm_layers_forward_order_differs_from_registration():
    class Rev(nn.Module):
        def __init__(self):
            super().__init__()
            self.late = nn.BatchNorm1d(2)
            self.early = nn.BatchNorm1d(2)

        def forward(self, x):
            return self.late(self.early(x))

    net = Rev()
    assert [n for n, _ in list_norm_layers(net)] == ["late", "early"]
    assert [n for n, _ in list_norm_layers(net, torch.randn(3, 2))] == ["early", "late"]
    before_late = net.late.running_mean.clone()
    reestimate_bn(net, [torch.randn(4, 2) + 5], layers=1, mode="reset", progress=False)
    assert torch.equal(net.late.running_mean, before_late)  # "first 1" is `early`, by forward order
    assert net.early.running_mean.min() > 3


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_3d_and_instance_norm_reset_moments(norm):
    net = _conv_bn(dims=3, norm=norm)
    x = torch.randn(5, 1, 6, 5, 4) * 2 - 1
    ref = copy.deepcopy(net)
    reestimate_bn(net, [x[:2], x[2:]], mode="reset", progress=False)
    z = np.moveaxis(ref[0](x).detach().double().numpy(), 1, 0).reshape(3, -1)
    np.testing.assert_allclose(net[1].running_mean.numpy(), z.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net[1].running_var.numpy(), z.var(1, ddof=1), rtol=1e-5)


def test_3d_unet_runs_and_keeps_weights():
    net = _tiny_unet(dims=3)
    before = {k: v.clone() for k, v in net.named_parameters()}
    reestimate_bn(net, [{"image": torch.rand(2, 1, 16, 16, 16), "label": None}], progress=False)
    for k, v in net.named_parameters():
        assert torch.equal(v, before[k])


def test_errors_are_clear():
    with pytest.raises(ValueError, match="no BatchNorm"):
        reestimate_bn(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), [torch.rand(2, 1, 8, 8)], progress=False)
    with pytest.raises(ValueError, match="no BatchNorm"):  # instance norm without running stats
        reestimate_bn(nn.Sequential(nn.Conv2d(1, 2, 3), nn.InstanceNorm2d(2)), [torch.rand(2, 1, 8, 8)], progress=False)
    net = _conv_bn()
    src = copy.deepcopy(net.state_dict())
    with pytest.raises(ValueError, match="empty"):
        reestimate_bn(net, [], progress=False)
    bad = torch.rand(2, 1, 8, 8)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        reestimate_bn(net, [bad], progress=False)
    for k, v in src.items():  # failures leave the source statistics in place
        assert torch.equal(v, net.state_dict()[k]), k
    with pytest.raises(KeyError, match="img"):
        reestimate_bn(net, [{"image": torch.rand(2, 1, 8, 8)}], image_key="img", progress=False)
    with pytest.raises(ValueError, match="mode"):
        reestimate_bn(net, [torch.rand(2, 1, 8, 8)], mode="median", progress=False)
    with pytest.raises(ValueError, match="alpha"):
        reestimate_bn(net, [torch.rand(2, 1, 8, 8)], alpha=0.0, progress=False)
    with pytest.raises(ValueError, match="layers"):
        reestimate_bn(net, [torch.rand(2, 1, 8, 8)], layers=5, progress=False)
    with pytest.raises(ValueError, match="single value per channel"):
        reestimate_bn(nn.Sequential(nn.BatchNorm1d(2)), [torch.rand(1, 2)], progress=False)
