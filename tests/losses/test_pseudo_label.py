import pytest
import torch
from monai.losses import DiceLoss

from monai_uda.losses import PseudoLabelCrossEntropyLoss, PseudoLabelDiceCELoss
from monai_uda.utils import IGNORE_INDEX


def test_pseudo_label_ce_ignores_unselected_pixels():
    logits = torch.tensor([[0.0, 0.0], [0.0, float(torch.log(torch.tensor(3.0)))]]).T.reshape(1, 2, 1, 2)
    # pixel 0: p = (0.5, 0.5), label 1 -> -log 0.5; pixel 1: ignored (255)
    label = torch.tensor([1, 255]).reshape(1, 1, 1, 2)
    loss = PseudoLabelCrossEntropyLoss()(logits, label)
    assert torch.allclose(loss, -torch.log(torch.tensor(0.5)), atol=1e-6)
    # both selected: mean of -log 0.5 and -log 0.75 (pixel 1 has p = (0.25, 0.75), label 1)
    both = PseudoLabelCrossEntropyLoss()(logits, torch.tensor([1, 1]).reshape(1, 1, 2))
    assert torch.allclose(both, -(torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.75))) / 2, atol=1e-6)
    # nothing selected: zero, finite, differentiable
    logits.requires_grad_(True)
    none = PseudoLabelCrossEntropyLoss()(logits, torch.full((1, 1, 1, 2), 255))
    none.backward()
    assert none.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match="outside"):
        PseudoLabelCrossEntropyLoss()(logits, torch.tensor([2, 0]).reshape(1, 1, 1, 2))
    with pytest.raises(ValueError, match="shape"):
        PseudoLabelCrossEntropyLoss()(logits, torch.zeros(1, 1, 2, 2))


def test_pseudo_label_dice_ce_by_hand():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    label = torch.randint(0, 3, (2, 1, 4, 4))
    label[0, 0, :2] = IGNORE_INDEX  # 8 ignored pixels
    loss = PseudoLabelDiceCELoss(lambda_dice=0.5, lambda_ce=2.0)(logits, label)
    valid = label[:, 0] != IGNORE_INDEX
    ce = torch.nn.functional.cross_entropy(logits, label[:, 0], ignore_index=IGNORE_INDEX)  # mean over valid pixels
    dice = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=IGNORE_INDEX)(logits, label)
    assert torch.allclose(loss, 0.5 * dice + 2.0 * ce, atol=1e-6)
    assert int(valid.sum()) == 24
    # the ignored pixels do not matter: changing their logits changes nothing
    other = logits.clone()
    other[0, :, :2] = torch.randn(3, 2, 4)
    assert torch.allclose(PseudoLabelDiceCELoss(lambda_dice=0.5, lambda_ce=2.0)(other, label), loss, atol=1e-6)


def test_pseudo_label_dice_ce_all_ignored_and_errors():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = PseudoLabelDiceCELoss()(logits, torch.full((1, 1, 3, 3), IGNORE_INDEX))
    assert torch.isfinite(loss)
    loss.backward()  # the cross-entropy part contributes 0
    with pytest.raises(ValueError, match="class-index"):
        PseudoLabelDiceCELoss()(logits, torch.zeros(1, 2, 3, 3))
    with pytest.raises(ValueError, match="labels must be"):
        PseudoLabelDiceCELoss()(logits, torch.full((1, 1, 3, 3), 5))
