import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from monai_uda.methods.shallow2deep.pixel_features import ILASTIK_SIGMAS, PixelFeatures, PixelFeaturesd

RNG = np.random.default_rng(0)
T = 3.0  # PixelFeatures' default kernel truncation (vigra/ilastik window of 3 sigma)


def _ref_2d(img, s, mode="mirror"):
    """Reference values straight from scipy.ndimage (explicit eigenvalues of 2x2 symmetric matrices)."""
    g = ndi.gaussian_filter(img, s, mode=mode, truncate=T)
    log = ndi.gaussian_laplace(img, s, mode=mode, truncate=T)
    ggm = ndi.gaussian_gradient_magnitude(img, s, mode=mode, truncate=T)
    hrr = ndi.gaussian_filter(img, s, order=(2, 0), mode=mode, truncate=T)
    hrc = ndi.gaussian_filter(img, s, order=(1, 1), mode=mode, truncate=T)
    hcc = ndi.gaussian_filter(img, s, order=(0, 2), mode=mode, truncate=T)
    hess = np.linalg.eigvalsh(np.stack([np.stack([hrr, hrc], -1), np.stack([hrc, hcc], -1)], -2))[..., ::-1]
    gr = ndi.gaussian_filter(img, s, order=(1, 0), mode=mode, truncate=T)
    gc = ndi.gaussian_filter(img, s, order=(0, 1), mode=mode, truncate=T)
    a, b, c = (ndi.gaussian_filter(v, 0.5 * s, mode=mode, truncate=T) for v in (gr * gr, gr * gc, gc * gc))
    st = np.linalg.eigvalsh(np.stack([np.stack([a, b], -1), np.stack([b, c], -1)], -2))[..., ::-1]
    return g, log, ggm, np.moveaxis(hess, -1, 0), np.moveaxis(st, -1, 0)


def test_default_names_and_shape_2d():
    t = PixelFeatures()
    assert t.sigmas == ILASTIK_SIGMAS
    names = t.feature_names(2)
    # smoothing on 7 scales, derivative families on the 6 scales >= 0.7 (ilastik), eigenvalues x2
    assert len(names) == 7 + 6 + 6 + 12 + 12 == 43
    assert names[0] == "gaussian_s0.3" and names[7] == "log_s0.7" and names[-1] == "structure_s10_e1"
    assert t.num_features(3) == 7 + 6 + 6 + 18 + 18
    out = t(RNG.random((1, 24, 20)).astype(np.float32))
    assert out.shape == (43, 24, 20) and out.dtype == np.float32


def test_values_match_scipy_2d():
    img = RNG.random((1, 23, 19)).astype(np.float32)
    sigmas = (0.7, 1.6)
    out = PixelFeatures(sigmas=sigmas)(img)
    names = PixelFeatures(sigmas=sigmas).feature_names(2)
    x = img[0].astype(np.float64)
    for s in sigmas:
        g, log, ggm, hess, st = _ref_2d(x, s)
        get = lambda n: out[names.index(n)]  # noqa: E731
        np.testing.assert_allclose(get(f"gaussian_s{s:g}"), g, atol=1e-5)
        np.testing.assert_allclose(get(f"log_s{s:g}"), log, atol=1e-4)
        np.testing.assert_allclose(get(f"ggm_s{s:g}"), ggm, atol=1e-4)
        for e in range(2):
            np.testing.assert_allclose(get(f"hessian_s{s:g}_e{e}"), hess[e], atol=1e-4)
            np.testing.assert_allclose(get(f"structure_s{s:g}_e{e}"), st[e], atol=1e-4)
        assert np.all(get(f"hessian_s{s:g}_e0") >= get(f"hessian_s{s:g}_e1") - 1e-6)
        assert np.all(get(f"structure_s{s:g}_e1") >= -1e-6)  # PSD tensor


def test_values_match_scipy_3d_and_torch_input():
    img = RNG.random((1, 9, 11, 10)).astype(np.float32)
    t = PixelFeatures(sigmas=(1.0,))
    out = t(torch.as_tensor(img))
    assert isinstance(out, torch.Tensor) and out.shape == (1 + 1 + 1 + 3 + 3, 9, 11, 10)
    x = img[0].astype(np.float64)
    np.testing.assert_allclose(out[0].numpy(), ndi.gaussian_filter(x, 1.0, mode="mirror", truncate=T), atol=1e-5)
    np.testing.assert_allclose(out[1].numpy(), ndi.gaussian_laplace(x, 1.0, mode="mirror", truncate=T), atol=1e-4)
    ggm = ndi.gaussian_gradient_magnitude(x, 1.0, mode="mirror", truncate=T)
    np.testing.assert_allclose(out[2].numpy(), ggm, atol=1e-4)
    order = lambda a, b: tuple(int(i == a) + int(i == b) for i in range(3))  # noqa: E731
    h = [[ndi.gaussian_filter(x, 1.0, order=order(a, b), mode="mirror", truncate=T) for b in range(3)]
         for a in range(3)]
    hess = np.linalg.eigvalsh(np.moveaxis(np.array(h), (0, 1), (-2, -1)))[..., ::-1]
    np.testing.assert_allclose(out[3:6].numpy(), np.moveaxis(hess, -1, 0), atol=1e-4)
    # trace of the Hessian = LoG
    np.testing.assert_allclose(out[3:6].sum(0).numpy(), out[1].numpy(), atol=1e-4)


def test_feature_subset_min_sigma_and_dict():
    t = PixelFeatures(sigmas=(0.3, 1.0), features=("ggm", "gaussian"), min_derivative_sigma=0.0)
    assert t.feature_names(2) == ["ggm_s0.3", "ggm_s1", "gaussian_s0.3", "gaussian_s1"]
    d = PixelFeaturesd(keys="image", output_keys="feat", sigmas=(1.0,), features=("gaussian",))
    img = RNG.random((1, 8, 8)).astype(np.float32)
    out = d({"image": img})
    assert out["image"] is img and out["feat"].shape == (1, 8, 8)
    assert PixelFeatures.from_config(t.get_config()).feature_names(2) == t.feature_names(2)


def test_bad_inputs():
    t = PixelFeatures(sigmas=(1.0,))
    with pytest.raises(ValueError, match="single-channel"):
        t(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        t(np.full((1, 8, 8), np.nan))
    with pytest.raises(ValueError, match="features"):
        PixelFeatures(features=("sobel",))
    with pytest.raises(ValueError, match="sigmas"):
        PixelFeatures(sigmas=(0.0,))
