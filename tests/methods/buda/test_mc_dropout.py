import math

import pytest
import torch

from monai_uda.methods.buda.mc_dropout import (
    UncertaintyRectifiedLoss,
    dropout_modules,
    mc_dropout_mode,
    mc_dropout_probs,
    mc_dropout_train_step,
    mc_dropout_uncertainty,
    rectify_pseudo_label,
)
from monai_uda.networks.unet import UDAUNet


pytestmark = pytest.mark.usefixtures("one_thread")


FEAT = (4, 4, 4, 4, 4, 4)


def test_no_dropout_is_an_error():
    with pytest.raises(ValueError, match="dropout"):
        dropout_modules(UDAUNet(features=FEAT))


def test_mode_restores_and_passes_differ():
    torch.manual_seed(0)
    net = UDAUNet(out_channels=3, features=FEAT, dropout=0.5).train()
    x = torch.randn(2, 1, 16, 16)
    with mc_dropout_mode(net), torch.no_grad():
        assert not any(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
        assert all(m.training for m in dropout_modules(net))
        p = mc_dropout_probs(net, x, num_passes=3)
    assert p.shape == (3, 2, 3, 16, 16)
    assert not torch.allclose(p[0], p[1])
    assert torch.allclose(p.sum(2), torch.ones(3, 2, 16, 16), atol=1e-5)
    assert all(m.training for m in net.modules())  # restored


def test_uncertainty_and_rectification_hand_case():
    # T=2 passes, 1 image, 2 classes, 2 pixels: pixel 0 agrees, pixel 1 disagrees
    p = torch.tensor([[[0.9, 0.8], [0.1, 0.2]], [[0.9, 0.2], [0.1, 0.8]]])[:, None, :, None, :]  # (T,B,C,H,W)
    mean, unc = mc_dropout_uncertainty(p)
    assert torch.allclose(mean[0, :, 0], torch.tensor([[0.9, 0.5], [0.1, 0.5]]))
    assert torch.allclose(unc[0, 0, 0], torch.tensor([0.0, 0.3]))
    lab = rectify_pseudo_label(mean, unc, threshold=0.1)
    assert lab[0, 0, 0].tolist() == [0, 255]
    y = torch.tensor([[[[0, 1]]]])
    loss = UncertaintyRectifiedLoss(eps=0.0)(p, y)
    expected = (-math.log(0.9) + math.exp(-0.3) * -math.log(0.5)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    # ignored pixels drop out of the mean
    y_ign = torch.tensor([[[[0, 255]]]])
    assert UncertaintyRectifiedLoss(eps=0.0)(p, y_ign).item() == pytest.approx(-math.log(0.9), rel=1e-5)


def test_train_step_uses_t_passes_and_updates():
    torch.manual_seed(0)
    net = UDAUNet(out_channels=2, features=FEAT, dropout=0.2)
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = net.final_conv.weight.detach().clone()
    out = mc_dropout_train_step(net, torch.randn(2, 1, 16, 16), torch.randint(0, 2, (2, 1, 16, 16)), opt, num_passes=4)
    assert len(calls) == 4
    assert math.isfinite(out["loss"]) and out["uncertainty"] > 0
    assert not torch.allclose(before, net.final_conv.weight)


def test_bad_inputs():
    net = UDAUNet(out_channels=2, features=FEAT, dropout=0.2)
    with pytest.raises(ValueError, match="num_passes"):
        mc_dropout_probs(net, torch.randn(2, 1, 16, 16), num_passes=1)
    p = torch.full((2, 1, 2, 4, 4), 0.5)
    with pytest.raises(ValueError, match="target"):
        UncertaintyRectifiedLoss()(p, torch.zeros(1, 2, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="label"):
        UncertaintyRectifiedLoss()(p, torch.full((1, 1, 4, 4), 3))


def _items_2d(tmp_path, n=2):
    import nibabel as nib
    import numpy as np

    items = []
    for i in range(n):
        path = str(tmp_path / f"t{i}.nii.gz")
        arr = np.random.default_rng(i).standard_normal((16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
        items.append({"image": path})
    return items


def test_mc_labeller_predicts_the_mean_of_t_passes_and_rectifies(tmp_path):
    from monai.inferers import SimpleInferer

    from monai_uda.engines.self_training import SlidingWindowPredictor
    from monai_uda.methods.buda.mc_dropout import MCDropoutLabeller
    from monai_uda.transforms import segmentation_transforms
    from monai_uda.utils import IGNORE_INDEX

    items = _items_2d(tmp_path)
    net = UDAUNet(out_channels=2, features=FEAT, dropout=0.5).train()
    calls = []
    net.register_forward_hook(lambda *a: calls.append(1))
    predictor = SlidingWindowPredictor(segmentation_transforms("target", spatial_dims=2), SimpleInferer())
    labeller = MCDropoutLabeller(predictor, num_passes=3, threshold=0.02)
    torch.manual_seed(0)
    with torch.no_grad():
        out = list(labeller.predict(net, items))
    assert len(calls) == 3 * len(items) and all(m.training for m in net.modules())  # T passes each, modes restored
    item, probs, extras = out[0]
    assert item is items[0] and probs.shape == (2, 16, 16) and extras["uncertainty"].shape == (1, 16, 16)
    # the same three passes by hand: the mean and the std-based uncertainty
    torch.manual_seed(0)
    x = segmentation_transforms("target", spatial_dims=2)(dict(items[0]))["image"][None]
    with mc_dropout_mode(net), torch.no_grad():
        samples = mc_dropout_probs(net, torch.as_tensor(x), num_passes=3)
    mean, unc = mc_dropout_uncertainty(samples)
    torch.testing.assert_close(torch.as_tensor(probs), mean[0])
    torch.testing.assert_close(torch.as_tensor(extras["uncertainty"]), unc[0])
    # __call__: argmax of the mean, uncertain pixels ignored
    label = labeller(probs, 1, **extras)
    expected = rectify_pseudo_label(mean, unc, 0.02)[0, 0]
    assert torch.equal(label, expected) and (label == IGNORE_INDEX).any() and (label != IGNORE_INDEX).any()
    no_threshold = MCDropoutLabeller(predictor)(probs, 1, **extras)
    assert torch.equal(no_threshold, torch.as_tensor(probs).argmax(0))
    with pytest.raises(ValueError, match="uncertainty"):
        labeller(probs, 1, uncertainty=torch.zeros(16, 16))


def test_mc_labeller_arguments():
    from monai.inferers import SimpleInferer

    from monai_uda.engines.self_training import SlidingWindowPredictor
    from monai_uda.methods.buda.mc_dropout import MCDropoutLabeller

    with pytest.raises(ValueError, match="num_passes"):
        MCDropoutLabeller(SlidingWindowPredictor(lambda d: d, SimpleInferer()), num_passes=1)
    with pytest.raises(TypeError, match="predictor"):
        MCDropoutLabeller(lambda m, i: iter(()))
