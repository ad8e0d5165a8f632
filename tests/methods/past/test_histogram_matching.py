import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_uda.methods.past.histogram_matching import HistogramMatching, RandHistogramMatchingd


def test_matches_reference_values_and_keeps_order():
    rng = np.random.default_rng(0)
    img = rng.random((1, 6, 5)).astype(np.float32)
    ref = (rng.random((1, 5, 6)) ** 3 * 50 + 10).astype(np.float32)  # same voxel count, other shape
    out = HistogramMatching(ref)(img)
    np.testing.assert_allclose(np.sort(out.ravel()), np.sort(ref.ravel()), rtol=1e-6)
    assert (np.argsort(out.ravel()) == np.argsort(img.ravel())).all()  # monotone mapping


def test_nonzero_keeps_background_and_channels():
    img = np.zeros((2, 4, 4), np.float32)
    img[:, 1:3, 1:3] = np.arange(8).reshape(2, 2, 2) + 1
    ref = np.zeros((1, 4, 4), np.float32)
    ref[0, :2, :2] = [[100, 200], [300, 400]]
    out = HistogramMatching(ref, nonzero=True)(MetaTensor(torch.as_tensor(img)))
    assert isinstance(out, MetaTensor)
    out = out.numpy()
    assert (out[img == 0] == 0).all()
    for c in range(2):
        np.testing.assert_allclose(np.sort(out[c][img[c] != 0]), [100, 200, 300, 400])


def test_rand_dict_and_errors():
    refs = [np.full((1, 4, 4), 5.0), np.full((1, 4, 4), 9.0)]
    t = RandHistogramMatchingd("img", refs)
    t.set_random_state(1)
    seen = {float(t({"img": np.random.rand(1, 4, 4)})["img"].mean()) for _ in range(15)}
    assert seen == {5.0, 9.0}
    with pytest.raises(ValueError, match="reference"):
        HistogramMatching()(np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="channels"):
        HistogramMatching(np.zeros((2, 4, 4)))(np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="empty"):
        RandHistogramMatchingd("img", [])
