import copy

import pytest
import torch
import torch.nn.functional as F
from monai.engines import SupervisedTrainer

from monai_uda.methods.early_features.refinement import EarlyHeadLoss
from monai_uda.methods.early_features.early_head import (
    EarlyFeaturesSegmentor,
    early_module_names,
    early_parameters,
    freeze_for_head_training,
)
from monai_uda.networks.unet import UDAUNet

FEATURES = (4, 4, 8, 8, 8, 4)


def _net(dims, classes=3):
    torch.manual_seed(0)
    return UDAUNet(spatial_dims=dims, in_channels=1, out_channels=classes, features=FEATURES)


def _shape(dims):
    return (2, 1) + (16,) * dims


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("levels", [(0,), (0, 1)])
def test_outputs_shapes_and_final_unchanged(dims, levels):
    net = _net(dims).eval()
    seg = EarlyFeaturesSegmentor(net, levels=levels, hidden_channels=4).eval()
    x = torch.rand(_shape(dims))
    with torch.no_grad():
        out = seg(x)
        ref = net(x)
    assert isinstance(out, tuple) and len(out) == 1 + len(levels)
    for o in out:
        assert o.shape == (2, 3) + (16,) * dims
    assert torch.equal(out[0], ref)  # hooks do not alter the base network's output
    assert not net.conv_0._forward_hooks and not net.down_1._forward_hooks  # hooks removed after forward
    seg.inference = True
    with torch.no_grad():
        single = seg(x)
    assert isinstance(single, torch.Tensor) and torch.equal(single, ref)


@pytest.mark.parametrize("dims", [2, 3])
def test_early_logits_are_head_on_early_features(dims):
    net = _net(dims).eval()
    seg = EarlyFeaturesSegmentor(net, levels=(0, 1), hidden_channels=0).eval()
    x = torch.rand(_shape(dims))
    with torch.no_grad():
        _, e0, e1 = seg(x)
        x0 = net.conv_0(x)
        x1 = net.down_1(x0)
        exp0 = seg.heads["0"](x0)
        low = seg.heads["1"](x1)
        mode = "bilinear" if dims == 2 else "trilinear"
        exp1 = F.interpolate(low, size=x.shape[2:], mode=mode, align_corners=False)
    assert low.shape[2:] == (8,) * dims  # level 1 is half resolution and gets upsampled
    assert torch.allclose(e0, exp0, atol=1e-6)
    assert torch.allclose(e1, exp1, atol=1e-6)


def test_deepcopy_keeps_working_independently():
    seg = EarlyFeaturesSegmentor(_net(2), levels=(0,)).eval()
    clone = copy.deepcopy(seg)
    x = torch.rand(_shape(2))
    with torch.no_grad():
        a, b = seg(x), clone(x)
        clone.heads["0"][-1].conv.weight.add_(1.0)
        c = clone(x)
    assert torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])


def test_early_parameters_sets():
    net = _net(2)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(early_parameters(net, (0,))) == ids(net.conv_0.parameters())
    both = ids(list(net.conv_0.parameters()) + list(net.down_1.parameters()))
    assert ids(early_parameters(net, (0, 1))) == both
    assert ids(early_parameters(net, (1,))) == both
    assert ids(early_parameters(net, (1,), include_lower=False)) == ids(net.down_1.parameters())
    seg = EarlyFeaturesSegmentor(net, levels=(0, 1))
    assert ids(early_parameters(seg)) == both
    assert early_module_names((0,)) == ["conv_0"]
    # the head's parameters are never "early" parameters
    assert not ids(early_parameters(seg)) & ids(seg.heads.parameters())


def test_bad_inputs():
    net = _net(2)
    with pytest.raises(TypeError, match="UDAUNet"):
        EarlyFeaturesSegmentor(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="levels"):
        EarlyFeaturesSegmentor(net, levels=(2,))
    seg = EarlyFeaturesSegmentor(net)
    with pytest.raises(ValueError, match="channels"):
        seg(torch.rand(1, 2, 16, 16))
    with pytest.raises(ValueError, match="spatial"):
        seg(torch.rand(1, 1, 16, 16, 16))


@pytest.mark.parametrize("dims", [2, 3])
def test_head_training_keeps_base_bit_identical(dims):
    """Stage 2 with a stock SupervisedTrainer (which calls network.train() every iteration)."""
    seg = EarlyFeaturesSegmentor(_net(dims, classes=2), levels=(0,), hidden_channels=4)
    params = freeze_for_head_training(seg)
    base_before = {k: v.clone() for k, v in seg.network.state_dict().items()}
    head_before = {k: v.clone() for k, v in seg.heads.state_dict().items()}
    torch.manual_seed(1)
    size = (1, 1) + (16,) * dims
    data = [{"image": torch.rand(size), "label": (torch.rand(size) > 0.5).float()} for _ in range(2)]
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=data,
        network=seg,
        optimizer=torch.optim.Adam(params, lr=1e-2),
        loss_function=EarlyHeadLoss(),
    )
    trainer.run()
    assert seg.training and not seg.network.training  # the frozen base stays in eval mode
    for k, v in seg.network.state_dict().items():
        assert torch.equal(v, base_before[k]), k  # weights and BatchNorm buffers
    assert any(not torch.equal(v, head_before[k]) for k, v in seg.heads.state_dict().items())
