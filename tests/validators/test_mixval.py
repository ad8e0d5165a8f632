import pytest
import torch

from monai_uda.validators.mixval import mixval_score
from monai_uda.validators.predictions import Predictions, predict_probabilities
from toy_networks import AllBackground, Threshold


def _pair():
    a, b = torch.zeros(1, 16, 16), torch.zeros(1, 16, 16)
    a[:, 2:8, 2:8] = 1.0  # 36 pixels
    b[:, 5:11, 5:11] = 1.0  # 36 pixels, 9 shared with a
    return [a, b]


def test_a_model_whose_boundary_respects_the_dominant_image_scores_one():
    assert mixval_score(Threshold(0.5), _pair()) == 1.0


def test_a_boundary_too_low_fails_the_inter_cluster_probe_only():
    # at 0.3 the minor image's foreground (0.45 in the mix) wins: 27 pixels predicted, 27 labelled, 54 in all
    net = Threshold(0.3)
    assert mixval_score(net, _pair(), region="intra") == 1.0
    assert mixval_score(net, _pair(), region="inter") == pytest.approx(2 * 27 / (27 + 54))
    assert mixval_score(net, _pair()) == pytest.approx((1 + 2 / 3) / 2)


def test_all_background_scores_worse_than_a_sensible_model():
    assert mixval_score(AllBackground(), _pair()) == 0.0 < mixval_score(Threshold(0.5), _pair())


def test_given_predictions_shapes_and_arguments():
    images = _pair() + [torch.zeros(1, 12, 20)]  # a third image of another shape: cropped to the common corner
    images[2][:, 3:9, 3:9] = 1.0
    net = Threshold(0.3)
    pred = Predictions(predict_probabilities(net, images))
    assert mixval_score(net, images, predictions=pred, seed=1) == mixval_score(net, images, seed=1)
    with pytest.raises(ValueError, match="lam"):
        mixval_score(net, images, lam=0.5)
    with pytest.raises(ValueError, match="region 'all'"):
        mixval_score(net, images, region="all")
    with pytest.raises(ValueError, match="at least 2 images"):
        mixval_score(net, images[:1])
