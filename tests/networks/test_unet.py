import pytest
import torch

from monai_uda.networks import FeatureRecorder, UDAUNet


@pytest.mark.parametrize("dims,size", [(2, (32, 32)), (3, (16, 16, 16))])
def test_unet_shapes_and_levels(dims, size):
    net = UDAUNet(dims, in_channels=1, out_channels=3).eval()
    x = torch.rand(1, 1, *size)
    with FeatureRecorder(net, ["conv_0", "down_1"]) as rec:
        y = net(x)
    assert y.shape == (1, 3, *size)
    assert rec.features["conv_0"].shape[2:] == size  # level 0 is full resolution
    assert rec.features["down_1"].shape[2:] == tuple(s // 2 for s in size)
    assert rec.features["conv_0"].shape[1] == net.level_channels(0)
    assert net.level_module(1) is net.down_1


def test_batchnorm_by_default_and_norm_switch():
    bn = [m for m in UDAUNet(2).modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn, "UDAUNet must use BatchNorm by default"
    inst = UDAUNet(2, norm="instance").modules()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inst)


def test_recorder_input_and_cleanup():
    net = UDAUNet(2).eval()
    rec = FeatureRecorder(net, ["final_conv"], record_input=True).attach()
    net(torch.rand(1, 1, 32, 32))
    assert rec.features["final_conv"].shape[1] == net.decoder_channels
    rec.remove()
    assert not net.final_conv._forward_pre_hooks
    with pytest.raises(KeyError, match="nope"):
        FeatureRecorder(net, ["nope"])
