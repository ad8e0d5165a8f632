import os

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage import io

from monai_uda.methods.past.cyclegan_trainer import translate_volume
from monai_uda.methods.past.cyclegan_networks import ResNetGenerator


class Identity(torch.nn.Module):
    in_channels = 1

    def forward(self, x):
        return x


class Shift(torch.nn.Module):
    def forward(self, x):
        return x + 1.0


def _nifti(path, shape=(20, 18, 5), zooms=(0.5, 0.6, 2.0)):
    rng = np.random.default_rng(0)
    data = rng.random(shape).astype(np.float32) * 100 + 1
    aff = np.diag(list(zooms) + [1.0])
    aff[:3, 3] = [-10.0, 4.0, 7.5]
    aff[0, 1] = 0.1  # oblique
    nib.save(nib.Nifti1Image(data, aff), str(path))
    return data, aff


@pytest.mark.parametrize("axis", [0, 2])
def test_translation_keeps_shape_affine_spacing(tmp_path, axis):
    data, aff = _nifti(tmp_path / "in.nii.gz")
    torch.manual_seed(0)
    g = ResNetGenerator(features=2, n_residual=1)  # sizes 20x18 etc. are not divisible by 4: padded
    out_path = tmp_path / "sub" / "out.nii.gz"
    translate_volume(g, str(tmp_path / "in.nii.gz"), str(out_path), axis=axis)
    out = nib.load(str(out_path))
    ref = nib.load(str(tmp_path / "in.nii.gz"))
    assert out.shape == data.shape
    np.testing.assert_allclose(out.affine, ref.affine, atol=1e-6)
    np.testing.assert_allclose(out.header.get_zooms(), ref.header.get_zooms())
    assert out.get_data_dtype() == np.float32
    assert np.isfinite(out.get_fdata()).all()
    assert os.listdir(tmp_path / "sub") == ["out.nii.gz"]  # atomic write left no temp file


def test_identity_generator_roundtrip_and_slicewise(tmp_path):
    data, _ = _nifti(tmp_path / "in.nii.gz")
    translate_volume(Identity(), str(tmp_path / "in.nii.gz"), str(tmp_path / "id.nii.gz"))
    np.testing.assert_allclose(nib.load(str(tmp_path / "id.nii.gz")).get_fdata(), data, rtol=1e-5, atol=1e-3)
    # without normalisation a +1 generator adds exactly 1 to every voxel
    translate_volume(Shift(), str(tmp_path / "in.nii.gz"), str(tmp_path / "s.nii.gz"), normalize=False, axis=1)
    np.testing.assert_allclose(nib.load(str(tmp_path / "s.nii.gz")).get_fdata(), data + 1, rtol=1e-6)


def test_overwrite_and_png(tmp_path):
    img = (np.arange(24 * 20) % 200).reshape(24, 20).astype(np.uint8)
    io.imsave(str(tmp_path / "a.png"), img, check_contrast=False)
    translate_volume(Identity(), str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    translate_volume(Identity(), str(tmp_path / "a.png"), str(tmp_path / "b.png"))  # replaced in place
    out = io.imread(str(tmp_path / "b.png"))
    assert out.dtype == np.uint8 and out.shape == img.shape
    assert np.abs(out.astype(int) - img).max() <= 1
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.png"]


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nifti_in"):
        translate_volume(Identity(), str(tmp_path / "missing.nii.gz"), str(tmp_path / "o.nii.gz"))
    _nifti(tmp_path / "in.nii.gz")
    with pytest.raises(ValueError, match="axis"):
        translate_volume(Identity(), str(tmp_path / "in.nii.gz"), str(tmp_path / "o.nii.gz"), axis=3)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported"):
        translate_volume(Identity(), str(tmp_path / "x.txt"), str(tmp_path / "o.txt"))
