import pytest
import torch

from monai_uda.transforms import MatchChannels


def test_rgb_to_grey_uses_luma_weights():
    img = torch.zeros(3, 2, 2)
    img[0], img[1], img[2] = 1.0, 2.0, 3.0
    out = MatchChannels(1)(img)
    assert out.shape == (1, 2, 2)
    assert torch.allclose(out, torch.full((1, 2, 2), 0.299 + 2 * 0.587 + 3 * 0.114))


def test_grey_to_rgb_and_rgba_drop_alpha():
    g = torch.rand(1, 4, 4, 4)
    assert torch.equal(MatchChannels(3)(g)[2], g[0])
    rgba = torch.rand(4, 3, 3)
    assert torch.equal(MatchChannels(3)(rgba), rgba[:3])


def test_wrong_channel_count_names_file():
    with pytest.raises(ValueError, match=r"5 channels.*img\.tif"):
        MatchChannels(1)(torch.rand(5, 3, 3), name="img.tif")
