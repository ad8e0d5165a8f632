import pytest
import torch

from monai_uda.validators.augmentation import default_augmentations, flip, intensity, rot90, tta_consistency_score
from monai_uda.validators.predictions import Predictions, predict_probabilities
from toy_networks import Threshold, blobs


def _blobs():
    return blobs(((2, 2), (6, 9), (9, 3)), side=4)


def test_a_flip_and_rotation_equivariant_model_is_fully_consistent():
    assert tta_consistency_score(Threshold(), _blobs()) == 1.0


def test_a_model_that_is_not_equivariant_is_less_consistent():
    # rolled by 2 pixels: the flip and the quarter turn move the prediction, the intensity changes do not
    score = tta_consistency_score(Threshold(roll=2), _blobs())
    assert 0.5 < score < 1.0
    only_flip = tta_consistency_score(Threshold(roll=2), _blobs(), augmentations=[flip(1)])
    assert only_flip == 0.0  # rolled +2 against rolled -2: 4-pixel-wide squares no longer overlap


def test_intensity_changes_that_cross_the_threshold_are_inconsistent():
    images = [torch.full((1, 8, 8), 0.45)]
    images[0][:, :4] = 0.55
    assert tta_consistency_score(Threshold(), images, augmentations=[intensity(scale=1.1)]) == 1.0  # 0.55 -> 0.605
    assert tta_consistency_score(Threshold(), images, augmentations=[intensity(shift=0.1)]) == pytest.approx(2 / 3)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_each_spatial_augmentation_is_undone_by_its_inverse(spatial_dims):
    x = torch.rand(2, *([6, 8, 10][:spatial_dims]))
    augs = default_augmentations(spatial_dims)
    assert len(augs) == 6
    for aug in augs[:2] + [flip(0), rot90((0, 1), k=3)]:
        y = aug.apply(x)
        assert torch.equal(aug.invert(y), x), aug.name
    assert not torch.equal(augs[0].apply(x), x) and augs[1].apply(x).shape != x.shape


def test_given_predictions_save_the_plain_pass_and_give_the_same_score():
    images = _blobs()
    net = Threshold(roll=2)
    pred = Predictions(predict_probabilities(net, images))
    assert tta_consistency_score(net, images, predictions=pred) == tta_consistency_score(net, images)
    with pytest.raises(ValueError, match="augmentations"):
        tta_consistency_score(net, images, augmentations=[])
