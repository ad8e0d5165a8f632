"""2D PNG (grey, RGB, instance labels) and 3D NIfTI chains, built only from MONAI transforms."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_uda.transforms import segmentation_transforms


def test_rgb_png_with_instance_labels_becomes_grey_and_binary(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    inst = np.zeros((40, 48), np.uint16)
    inst[5:10, 5:10], inst[20:30, 20:30] = 3, 17
    Image.fromarray(rgb).save(tmp_path / "i.png")
    Image.fromarray(inst).save(tmp_path / "l.png")
    x = segmentation_transforms("eval", spatial_dims=2, in_channels=1, binarize=True)(
        {"image": str(tmp_path / "i.png"), "label": str(tmp_path / "l.png")}
    )
    assert x["image"].shape == (1, 48, 40)  # MONAI's PIL reader gives (W, H)
    assert set(torch.unique(x["label"]).tolist()) == {0.0, 1.0}
    assert int(x["label"].sum()) == 25 + 100
    assert abs(float(x["image"].mean())) < 1e-4 and abs(float(x["image"].std()) - 1) < 1e-2  # z-score


def test_tiff_grey_train_crops(tmp_path):
    import tifffile

    img = np.random.default_rng(1).random((64, 64)).astype(np.float32)
    lab = np.zeros((64, 64), np.uint8)
    lab[10:30, 10:30] = 1
    tifffile.imwrite(tmp_path / "i.tif", img)
    tifffile.imwrite(tmp_path / "l.tif", lab)
    out = segmentation_transforms("train", spatial_dims=2, roi_size=[32, 32], num_samples=3)(
        {"image": str(tmp_path / "i.tif"), "label": str(tmp_path / "l.tif")}
    )
    assert len(out) == 3 and all(o["image"].shape == (1, 32, 32) for o in out)


def test_nifti_3d_orientation_spacing_and_label_map(tmp_path):
    img = np.random.default_rng(2).random((10, 12, 8)).astype(np.float32) + 1
    lab = np.zeros((10, 12, 8), np.uint8)
    lab[2:5, 2:5, 2:5] = 4
    lab[6:8, 6:8, 2:4] = 2
    aff = np.diag([-1.0, 1.0, 2.0, 1.0])  # LAS, anisotropic
    nib.save(nib.Nifti1Image(img, aff), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(lab, aff), tmp_path / "l.nii.gz")
    t = segmentation_transforms("eval", spatial_dims=3, label_map={2: 1, 4: 1}, pixdim=[1.0, 1.0, 1.0])
    x = t({"image": str(tmp_path / "i.nii.gz"), "label": str(tmp_path / "l.nii.gz")})
    assert x["image"].shape == (1, 10, 12, 15)  # z resampled from 2 mm to 1 mm
    assert torch.allclose(x["image"].pixdim, torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64))
    aff_out = x["image"].affine
    assert aff_out[0, 0] > 0  # RAS
    assert set(torch.unique(x["label"]).tolist()) == {0.0, 1.0}


def test_nan_image_error_names_file(tmp_path):
    img = np.ones((8, 8, 8), np.float32)
    img[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(img, np.eye(4)), tmp_path / "nan.nii.gz")
    with pytest.raises(Exception) as err:
        segmentation_transforms("infer", spatial_dims=3)({"image": str(tmp_path / "nan.nii.gz")})
    chain, e = [], err.value
    while e is not None:  # MONAI wraps transform errors; the original is the cause
        chain.append(str(e))
        e = e.__cause__
    assert any("NaN" in m and "nan.nii.gz" in m for m in chain), chain


def test_bad_stage():
    with pytest.raises(ValueError, match="stage"):
        segmentation_transforms("bogus")
