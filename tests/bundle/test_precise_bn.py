"""Precise BN: the kept model's BatchNorm statistics recomputed over the whole training images."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from monai_uda.bundle import precise_bn
from monai_uda.data import UDAData
from monai_uda.networks import UDAUNet
from monai_uda.transforms import segmentation_transforms


def _bn(state):
    return {k: v for k, v in state.items() if k.endswith(("running_mean", "running_var"))}


def test_statistics_of_whole_training_images_weights_unchanged(tmp_path, tiny_demo_2d, one_thread):
    uda = UDAData(tiny_demo_2d)
    torch.manual_seed(0)
    net = UDAUNet(spatial_dims=2, in_channels=1, out_channels=2)
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)  # fresh running statistics: mean 0, var 1
    before = torch.load(ckpt, weights_only=True)
    assert precise_bn(ckpt, UDAUNet(spatial_dims=2, in_channels=1, out_channels=2), uda, "source_training") == str(ckpt)
    after = torch.load(ckpt, weights_only=True)
    weights = [k for k in before if k not in _bn(before) and not k.endswith("num_batches_tracked")]
    assert all(torch.equal(before[k], after[k]) for k in weights)  # only the statistics change
    # the same as torch's update_bn over the whole source training images, one image per pass
    ref = UDAUNet(spatial_dims=2, in_channels=1, out_channels=2)
    ref.load_state_dict(before)
    tf = segmentation_transforms("target", uda=uda)
    images = [tf(item)["image"][None] for item in uda.split("source_training")]
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(images, ref)
    for k, v in _bn(ref.state_dict()).items():
        torch.testing.assert_close(after[k], v)
    first = "conv_0.conv_0.adn.N.running_mean"
    assert not torch.equal(after[first], before[first])
    assert stat.S_IMODE(os.stat(ckpt).st_mode) & 0o644 == 0o644  # a normal file mode (atomic write)
    # idempotent: a second pass (e.g. a finished run resumed) gives the same statistics
    precise_bn(ckpt, UDAUNet(spatial_dims=2, in_channels=1, out_channels=2), uda, "source_training")
    again = torch.load(ckpt, weights_only=True)
    for k, v in _bn(after).items():
        torch.testing.assert_close(again[k], v)


def test_a_network_without_batchnorm_is_left_alone(tmp_path, tiny_demo_2d):
    net = torch.nn.Conv2d(1, 2, 3)
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    mtime = os.stat(ckpt).st_mtime_ns
    assert precise_bn(ckpt, net, UDAData(tiny_demo_2d), "source_training") is None
    assert os.stat(ckpt).st_mtime_ns == mtime


@pytest.mark.parametrize("bundle", ["source_segmentation", "pixel_alignment_segmentation"])
def test_the_source_recipe_has_precise_bn_as_an_option_off_by_default(bundle):
    import json

    from monai_uda.bundle import bundle_dir

    cfg = json.loads((bundle_dir(bundle) / "configs" / "train.json").read_text())
    assert cfg["precise_bn"] is False  # measured: not a uniform improvement (docs/benchmarks/precise_bn_check/)
    run = cfg["run"]
    assert "trainer.run()" in run[0] and "precise_bn" in run[1] and "write_model_card" in run[2]
