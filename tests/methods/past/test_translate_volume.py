import os

import nibabel as nib
import numpy as np
import pytest
import torch
from skimage import io

from monai_uda.methods.past.cyclegan_trainer import translate_padded, translate_volume
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


class Square(torch.nn.Module):  # a non-affine translation (what a translator does), the scale is the question
    def forward(self, x):
        return x**2


def test_output_scale_is_an_affine_map_the_pipeline_z_score_removes(tmp_path):
    """The output is written on the target's (or the input's) mean and std; the segmentation pipeline z-scores it
    again, so both give the z-scored generator output: the scale does not undo the translation."""
    from monai.transforms import NormalizeIntensity

    data, _ = _nifti(tmp_path / "in.nii.gz")
    src, tgt = tmp_path / "src.nii.gz", tmp_path / "tgt.nii.gz"
    translate_volume(Square(), str(tmp_path / "in.nii.gz"), str(src))
    translate_volume(Square(), str(tmp_path / "in.nii.gz"), str(tgt), output_stats=(500.0, 20.0))
    a, b = nib.load(str(src)).get_fdata(), nib.load(str(tgt)).get_fdata()
    # z-units to the scale: y * std + mean, and the mean of g**2 (g z-scored) is 1
    assert a.mean() == pytest.approx(data.mean() + data.std(), rel=0.01) and b.mean() == pytest.approx(520.0, rel=0.01)
    z = NormalizeIntensity(nonzero=True)
    g = (data - data.mean()) / data.std()  # the generator's input (z-score over the non-zero voxels: all here)
    want = np.asarray(z(torch.as_tensor(g**2)))
    for out in (a, b):
        np.testing.assert_allclose(np.asarray(z(torch.as_tensor(out))), want, atol=1e-3)
        assert not np.allclose(np.asarray(z(torch.as_tensor(out))), np.asarray(z(torch.as_tensor(data))), atol=0.1)


class NeedsMultipleOf4(torch.nn.Module):
    """A generator with two downsamplings: refuses sizes that are not multiples of 4, records what it got."""

    n_down = 2

    def forward(self, x):
        assert x.shape[-2] % 4 == 0 and x.shape[-1] % 4 == 0, x.shape
        self.seen = x.clone()
        return -x


def test_translate_padded_pads_to_the_generator_multiple_and_crops_back():
    g = NeedsMultipleOf4()
    x = torch.arange(2 * 13 * 10, dtype=torch.float32).reshape(2, 1, 13, 10)
    y = translate_padded(g, x)
    assert g.seen.shape == (2, 1, 16, 12)
    assert torch.equal(g.seen[..., 13:, :10], x[..., 12:13, :].expand(2, 1, 3, 10))  # replicate padding
    assert torch.equal(y, -x)
    x4 = torch.ones(1, 1, 8, 4)
    assert torch.equal(translate_padded(g, x4), -x4) and g.seen.shape == (1, 1, 8, 4)  # already a multiple: as is
