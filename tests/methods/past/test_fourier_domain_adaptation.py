import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_uda.methods.past.fourier_domain_adaptation import (
    FourierDomainAdaptation,
    RandFourierDomainAdaptationd,
    fda_low_frequency_mask,
)


def test_mask_size():
    m = fda_low_frequency_mask((32, 40), 0.1)  # b = floor(3.2) = 3 -> 7x7 centred block
    assert m.sum() == 49 and m[16, 20] and m[13, 17] and not m[12, 20]
    assert fda_low_frequency_mask((8, 8, 8), 0.0).sum() == 1  # only the DC term


def test_beta_zero_swaps_only_the_mean_2d_and_3d():
    for shape in ((1, 16, 12), (1, 8, 8, 6)):
        g = torch.Generator().manual_seed(0)
        src = torch.rand(shape, generator=g) + 0.5
        tgt = torch.rand(shape, generator=g) * 4 + 3
        out = FourierDomainAdaptation(tgt, beta=0.0)(src)
        # |DC| of the target, source phase 0 (positive sum): out = src - mean(src) + mean(tgt)
        torch.testing.assert_close(out, src - src.mean() + tgt.mean(), rtol=1e-4, atol=1e-4)


def test_same_amplitude_target_leaves_image_unchanged():
    src = torch.rand(2, 16, 16)
    shifted = torch.roll(src, shifts=(3, 5), dims=(1, 2))  # circular shift: same amplitude spectrum
    for beta in (0.05, 0.2, 0.5):
        torch.testing.assert_close(FourierDomainAdaptation(shifted, beta=beta)(src), src, rtol=1e-4, atol=1e-4)


def test_full_band_takes_target_amplitude():
    src, tgt = torch.rand(1, 16, 16), torch.rand(1, 16, 16) * 5
    out = FourierDomainAdaptation(tgt, beta=0.5)(src)
    amp = torch.fft.fftn(out, dim=(1, 2)).abs()
    torch.testing.assert_close(amp, torch.fft.fftn(tgt, dim=(1, 2)).abs(), rtol=1e-3, atol=1e-3)


def test_types_meta_and_resize():
    src = MetaTensor(torch.rand(1, 16, 16), affine=torch.diag(torch.tensor([2.0, 2.0, 1.0, 1.0])))
    out = FourierDomainAdaptation(np.random.rand(1, 24, 20).astype(np.float32), beta=0.05)(src)
    assert isinstance(out, MetaTensor) and out.shape == src.shape and out.affine[0, 0] == 2
    out_np = FourierDomainAdaptation(np.ones((1, 16, 16)), beta=0.01)(np.random.rand(1, 16, 16))
    assert isinstance(out_np, np.ndarray) and out_np.shape == (1, 16, 16)
    with pytest.raises(ValueError, match="resize_target"):
        FourierDomainAdaptation(torch.rand(1, 8, 8), resize_target=False)(torch.rand(1, 16, 16))


def test_bad_input():
    with pytest.raises(ValueError, match="beta"):
        FourierDomainAdaptation(beta=0.7)
    with pytest.raises(ValueError, match="channels"):
        FourierDomainAdaptation(torch.rand(2, 8, 8))(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="no target"):
        FourierDomainAdaptation()(torch.rand(1, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        FourierDomainAdaptation(torch.rand(1, 8, 8))(torch.full((1, 8, 8), float("nan")))
    with pytest.raises(ValueError, match="empty"):
        RandFourierDomainAdaptationd("img", [])


def test_rand_dict_draws_from_list(tmp_path):
    import nibabel as nib

    targets = [torch.full((1, 8, 8, 4), 3.0), torch.full((1, 8, 8, 4), 7.0)]
    path = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 4), 11.0, np.float32), np.eye(4)), str(path))
    t = RandFourierDomainAdaptationd(["img", "img2"], targets + [str(path)], beta=(0.0, 0.0))
    t.set_random_state(0)
    src = torch.rand(1, 8, 8, 4) + 1
    means = set()
    for _ in range(20):
        d = t({"img": src, "img2": src, "label": 1})
        assert d["label"] == 1 and torch.allclose(d["img"], d["img2"])
        means.add(round(float(d["img"].mean()), 3))
    assert means == {3.0, 7.0, 11.0}  # beta = 0: the mean of the drawn reference
    off = RandFourierDomainAdaptationd("img", targets, prob=0.0)
    assert off({"img": src})["img"] is src
