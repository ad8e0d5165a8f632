import math

import numpy as np
import pytest
import torch

from monai_uda.validators.label_statistics import (component_size_score, foreground_fraction_score,
                                                   source_label_statistics)
from monai_uda.validators.predictions import Predictions


def _labels():
    a = torch.zeros(1, 16, 16, dtype=torch.long)
    a[0, 1:3, 1:3] = 1  # 4 pixels
    a[0, 8:11, 8:11] = 1  # 9 pixels
    b = torch.zeros(1, 16, 16, dtype=torch.long)
    b[0, 4:8, 4:8] = 1  # 16 pixels
    b[0, 15, :] = 255  # ignored: not counted, not a structure
    return [a, b]


def _as_predictions(maps):
    one_hot = torch.nn.functional.one_hot
    return Predictions([one_hot(torch.where(m == 255, 0, m), 2).movedim(-1, 0).float() for m in maps])


def test_source_statistics_known_fractions_and_sizes():
    stats = source_label_statistics(_labels())
    assert stats.num_classes == 2
    assert stats.class_fractions == pytest.approx([29 / (256 + 240)])
    assert sorted(np.exp(stats.log_component_sizes[0])) == pytest.approx([4, 9, 16])


def test_a_prediction_like_the_source_labels_scores_best_and_all_background_scores_worse():
    stats = source_label_statistics(_labels())
    like = _as_predictions([m[0] for m in _labels()])
    # the ignored row is background in the prediction: 29 of 512 pixels against 29 of 496
    assert foreground_fraction_score(like, stats) == pytest.approx(-math.log(512 / 496), rel=1e-4)  # eps = 1e-6
    assert component_size_score(like, stats) == pytest.approx(0.0, abs=1e-9)
    grown = torch.zeros(16, 16, dtype=torch.long)
    grown[2:12, 2:12] = 1  # one 100-pixel blob
    sensible = _as_predictions([grown, torch.zeros(16, 16, dtype=torch.long)])
    background = _as_predictions([torch.zeros(16, 16, dtype=torch.long)] * 2)
    assert foreground_fraction_score(like, stats) > foreground_fraction_score(sensible, stats) > \
        foreground_fraction_score(background, stats)
    assert foreground_fraction_score(background, stats) < -5
    assert component_size_score(like, stats) > component_size_score(sensible, stats) > -math.inf
    assert component_size_score(background, stats) == -math.inf


def test_3d_labels_and_errors():
    label = np.zeros((1, 4, 6, 6), dtype=np.uint8)
    label[0, 1:3, 1:3, 1:3] = 2
    stats = source_label_statistics([label], spatial_dims=3)
    assert stats.num_classes == 3 and stats.class_fractions == pytest.approx([0, 8 / 144])
    assert stats.log_component_sizes[1] == pytest.approx([math.log(8)])
    with pytest.raises(ValueError, match=r"labels\[0\]"):
        source_label_statistics([label[0, 0]], spatial_dims=3)
    two_class = _as_predictions([torch.zeros(4, 4, dtype=torch.long)])
    with pytest.raises(ValueError, match="3 classes"):
        foreground_fraction_score(two_class, stats)
    with pytest.raises(ValueError, match="needs source_statistics"):
        component_size_score(two_class, None)
