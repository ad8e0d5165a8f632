import pytest
import torch

from monai_uda.networks.unet import UDAUNet
from monai_uda.methods.buda.variance_head import VarianceUNet


pytestmark = pytest.mark.usefixtures("one_thread")


FEAT = (4, 4, 8, 8, 8, 4)


@pytest.mark.parametrize("dims,shape", [(2, (2, 1, 32, 16)), (3, (1, 1, 16, 16, 16))])
def test_logits_and_variance_shapes_5_classes(dims, shape):
    torch.manual_seed(0)
    base = UDAUNet(spatial_dims=dims, out_channels=5, features=FEAT)
    net = VarianceUNet(base).eval()
    x = torch.randn(*shape)
    o, v = net(x)
    assert o.shape == v.shape == (shape[0], 5, *shape[2:])
    assert torch.isfinite(v).all() and (v >= net.min_variance).all()
    # the logits are the unchanged base network's output
    assert torch.allclose(o, base(x))
    net.output = "logits"
    seg = net(x)
    assert isinstance(seg, torch.Tensor) and torch.allclose(seg, o)
    net.output = "variance"
    assert torch.allclose(net(x), v)


def test_variance_positive_for_extreme_features():
    net = VarianceUNet(UDAUNet(out_channels=5, features=FEAT), min_variance=1e-4)
    with torch.no_grad():
        net.variance_conv.weight.fill_(-1e4)
        net.variance_conv.bias.fill_(-1e4)
        feats = torch.full((1, FEAT[5], 4, 4), 100.0)
        v = net.variance(feats)
        assert torch.isfinite(v).all() and (v >= 1e-4).all()
        net.variance_conv.weight.fill_(1e4)
        assert torch.isfinite(net.variance(feats)).all()


def test_init_variance():
    net = VarianceUNet(UDAUNet(out_channels=3, features=FEAT), init_variance=0.1).eval()
    _, v = net(torch.randn(1, 1, 16, 16))
    assert torch.allclose(v, torch.full_like(v, 0.1), atol=1e-6)


def test_hooks_do_not_leak():
    base = UDAUNet(out_channels=2, features=FEAT)
    net = VarianceUNet(base).eval()
    net(torch.randn(1, 1, 16, 16))
    assert len(base.final_conv._forward_pre_hooks) == 0


def test_bad_arguments():
    base = UDAUNet(out_channels=2, features=FEAT)
    with pytest.raises(KeyError, match="nope"):
        VarianceUNet(base, feature_layer="nope")
    with pytest.raises(ValueError, match="Conv"):
        VarianceUNet(base, feature_layer="conv_0")
    with pytest.raises(ValueError, match="min_variance"):
        VarianceUNet(base, min_variance=0.0)
    with pytest.raises(ValueError, match="output"):
        VarianceUNet(base, output="mean")


@pytest.mark.parametrize("output", ["both", "logits", "variance"])
def test_torchscript_equals_eager(output):
    """``torch.jit.script`` (what ``monai.bundle ckpt_export`` uses) gives the eager outputs in every mode."""
    torch.manual_seed(0)
    net = VarianceUNet(UDAUNet(out_channels=3, features=FEAT), output=output).eval()
    x = torch.randn(2, 1, 32, 32)
    scripted = torch.jit.script(net)
    with torch.no_grad():
        a, b = scripted(x), net(x)
    if output == "both":
        assert isinstance(a, tuple) and all(torch.equal(i, j) for i, j in zip(a, b))
    else:
        assert isinstance(a, torch.Tensor) and torch.equal(a, b)


def test_reset_parameters_restores_the_initial_variance_and_segmentation_network():
    from monai_uda.engines.self_training import reset_parameters
    from monai_uda.methods.buda.variance_head import segmentation_network

    base = UDAUNet(out_channels=2, features=FEAT)
    net = VarianceUNet(base, init_variance=0.25)
    with torch.no_grad():
        net.variance_conv.weight.fill_(3.0)
        base.final_conv.weight.fill_(3.0)
    reset_parameters(net)  # the wrapped network's layers first, the head's own value last
    _, v = net.eval()(torch.randn(1, 1, 16, 16))
    assert torch.allclose(v, torch.full_like(v, 0.25), atol=1e-6)
    assert not torch.all(base.final_conv.weight == 3.0)
    default = VarianceUNet(UDAUNet(out_channels=2, features=FEAT))
    with torch.no_grad():
        default.variance_conv.weight.fill_(3.0)
    default.reset_parameters()  # without init_variance: PyTorch's default initialisation
    assert not torch.all(default.variance_conv.weight == 3.0)
    assert segmentation_network(net) is base and segmentation_network(base) is base
