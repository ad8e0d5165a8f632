"""Every bad input of a UDA datalist gets an error that names the file or key."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from monai_uda.data import DatalistError, UDAData, load_uda_datalist, write_uda_datalist
from monai_uda.data.datalist import target_training_images


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return str(path)


def _nii(path, arr, spacing=(1.0, 1.0, 1.0)):
    nib.save(nib.Nifti1Image(arr, np.diag(list(spacing) + [1.0])), str(path))
    return str(path)


@pytest.fixture
def good(tmp_path):
    rng = np.random.default_rng(0)
    img = lambda n: _png(tmp_path / f"{n}.png", rng.integers(0, 255, (32, 32), dtype=np.uint8))  # noqa: E731
    lab = lambda n: _png(tmp_path / f"{n}_seg.png", (rng.random((32, 32)) > 0.5).astype(np.uint8))  # noqa: E731
    dl = {
        "name": "t",
        "spatial_dims": 2,
        "labels": {"0": "background", "1": "fg"},
        "source_training": [{"image": img("s0"), "label": lab("s0")}],
        "source_validation": [{"image": img("s1"), "label": lab("s1")}],
        "target_training": [{"image": img("t0")}],
        "target_test": [{"image": img("t1"), "label": lab("t1")}],
    }
    return dl, tmp_path


def _as_3d(dl, tmp_path):
    """The ``good`` datalist as a 3D one: every entry an 8^3 NIfTI volume (labels: zeros)."""
    dl["spatial_dims"] = 3
    for key in ("source_training", "source_validation", "target_training", "target_test"):
        for i, item in enumerate(dl[key]):
            item["image"] = _nii(tmp_path / f"{key}{i}.nii.gz", np.zeros((8, 8, 8), np.float32))
            if "label" in item:
                item["label"] = _nii(tmp_path / f"{key}{i}_seg.nii.gz", np.zeros((8, 8, 8), np.uint8))
    return dl


def _write(dl, tmp_path, name="dl.json"):
    return write_uda_datalist(dl, tmp_path / name)


def test_good_datalist_loads_and_monai_reads_it(good):
    dl, tmp = good
    p = _write(dl, tmp)
    out = load_uda_datalist(p)
    assert len(out["target_training"]) == 1
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(p, data_list_key="target_test")
    assert items[0]["label"].endswith("t1_seg.png")
    u = UDAData(p)
    assert u.num_classes == 2 and u.spatial_dims == 2
    assert all("label" not in it for it in u.split("target_training"))


def test_relative_paths_resolve_against_datalist_folder(good):
    dl, tmp = good
    for key in ("source_training", "source_validation", "target_training", "target_test"):
        for it in dl[key]:
            it["image"] = os.path.basename(it["image"])
            if "label" in it:
                it["label"] = os.path.basename(it["label"])
    out = load_uda_datalist(_write(dl, tmp))
    assert os.path.isabs(out["source_training"][0]["image"])


def test_missing_file_named(good):
    dl, tmp = good
    dl["source_training"][0]["image"] = str(tmp / "nope.png")
    with pytest.raises(DatalistError, match=r"source_training\[0\].*nope\.png"):
        load_uda_datalist(_write(dl, tmp))


def test_missing_datalist_file(tmp_path):
    with pytest.raises(DatalistError, match="missing.json"):
        load_uda_datalist(tmp_path / "missing.json")


def test_unreadable_file_named(good):
    dl, tmp = good
    bad = tmp / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    dl["target_training"][0]["image"] = str(bad)
    with pytest.raises(DatalistError, match=r"target_training\[0\].*corrupt\.png"):
        load_uda_datalist(_write(dl, tmp))


def test_corrupt_nifti_named(good):
    dl, tmp = good
    p = _nii(tmp / "vol.nii.gz", np.zeros((8, 8, 8), np.float32))
    raw = open(p, "rb").read()
    with open(p, "wb") as f:
        f.write(raw[: len(raw) // 2])  # truncated gzip
    _as_3d(dl, tmp)
    dl["target_training"][0]["image"] = p
    with pytest.raises(DatalistError, match="vol.nii.gz"):
        load_uda_datalist(_write(dl, tmp))


def test_shape_mismatch_named(good):
    dl, tmp = good
    dl["source_training"][0]["label"] = _png(tmp / "small_seg.png", np.zeros((16, 32), np.uint8))
    with pytest.raises(DatalistError, match=r"shape mismatch.*small_seg\.png"):
        load_uda_datalist(_write(dl, tmp))


def test_spacing_mismatch_named(good):
    dl, tmp = good
    _as_3d(dl, tmp)
    img = _nii(tmp / "a.nii.gz", np.zeros((8, 8, 8), np.float32), (1, 1, 1))
    lab = _nii(tmp / "a_seg.nii.gz", np.zeros((8, 8, 8), np.uint8), (2, 1, 1))
    dl["target_test"] = [{"image": img, "label": lab}]
    with pytest.raises(DatalistError, match=r"target_test\[0\].*spacing mismatch.*a_seg\.nii\.gz"):
        load_uda_datalist(_write(dl, tmp))


def test_nan_image_named(good):
    dl, tmp = good
    arr = np.zeros((8, 8, 8), np.float32)
    arr[1, 2, 3] = np.nan
    _as_3d(dl, tmp)
    dl["target_training"] = [{"image": _nii(tmp / "nan.nii.gz", arr)}]
    with pytest.raises(DatalistError, match=r"NaN.*nan\.nii\.gz"):
        load_uda_datalist(_write(dl, tmp))


def test_label_out_of_range_named(good):
    dl, tmp = good
    lab = np.zeros((32, 32), np.uint8)
    lab[0, 0] = 7
    dl["source_validation"][0]["label"] = _png(tmp / "seven_seg.png", lab)
    with pytest.raises(DatalistError, match=r"source_validation\[0\].*\[7\].*seven_seg\.png"):
        load_uda_datalist(_write(dl, tmp))


def test_label_map_and_binarize_allow_raw_values(good):
    dl, tmp = good
    lab = np.zeros((32, 32), np.uint8)
    lab[0, 0], lab[0, 1] = 2, 4
    dl["source_validation"][0]["label"] = _png(tmp / "codes_seg.png", lab)
    dl["label_map"] = {"2": 1, "4": 1}
    load_uda_datalist(_write(dl, tmp, "a.json"))
    dl.pop("label_map")
    dl["binarize"] = True
    load_uda_datalist(_write(dl, tmp, "b.json"))


def test_empty_target_set(good):
    dl, tmp = good
    dl["target_training"] = []
    with pytest.raises(DatalistError, match="target_training.*empty"):
        load_uda_datalist(_write(dl, tmp))


def test_target_training_must_not_carry_labels(good):
    dl, tmp = good
    dl["target_training"][0]["label"] = dl["target_test"][0]["label"]
    with pytest.raises(DatalistError, match=r"target_training\[0\].*must not carry labels"):
        load_uda_datalist(_write(dl, tmp))
    # and the accessor for methods never hands labels out
    assert "label" not in target_training_images(dl)[0]


def test_missing_key_named(good):
    dl, tmp = good
    dl.pop("target_test")
    with pytest.raises(DatalistError, match="target_test"):
        load_uda_datalist(_write(dl, tmp))


def test_write_is_atomic_and_keeps_old_file_on_failure(good, monkeypatch):
    dl, tmp = good
    p = _write(dl, tmp)
    before = open(p).read()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("monai_uda.utils.os.replace", boom)
    with pytest.raises(OSError):
        write_uda_datalist({"x": 1}, p)
    assert open(p).read() == before
    assert os.listdir(tmp) and not [f for f in os.listdir(tmp) if f.startswith(".dl.json")]  # no temp file left


def test_misspelt_key_is_refused_with_the_nearest_valid_name(good):
    dl, tmp = good
    dl["lable_map"] = {"2": 1}
    with pytest.raises(DatalistError, match=r"unknown key 'lable_map'; did you mean 'label_map'\?"):
        load_uda_datalist(_write(dl, tmp))
    dl.pop("lable_map")
    dl["target_test"][0]["lable"] = dl["target_test"][0].pop("label")
    with pytest.raises(DatalistError, match=r"target_test\[0\]: unknown key 'lable'; did you mean 'label'\?"):
        load_uda_datalist(_write(dl, tmp))


def test_unrelated_unknown_key_is_reported_not_refused(good):
    dl, tmp = good
    dl["my_project_notes"] = "kept"
    with pytest.warns(UserWarning, match="unknown key 'my_project_notes' is ignored"):
        load_uda_datalist(_write(dl, tmp))


def test_a_3d_volume_in_a_2d_datalist_is_refused_naming_the_file(good):
    dl, tmp = good
    dl["target_training"][0]["image"] = _nii(tmp / "vol.nii.gz", np.zeros((16, 16, 16), np.float32))
    with pytest.raises(DatalistError, match=r"target_training\[0\]: .*vol\.nii\.gz is 3-dimensional .*spatial_dims 2"):
        load_uda_datalist(_write(dl, tmp))
    load_uda_datalist(_write(dl, tmp), deep=False)  # the shallow check only looks for the files


def test_a_two_channel_png_is_refused_naming_the_file(good):
    dl, tmp = good
    two = Image.fromarray(np.zeros((32, 32, 2), np.uint8), mode="LA")
    two.save(tmp / "la.png")
    dl["source_training"][0]["image"] = str(tmp / "la.png")
    with pytest.raises(DatalistError, match=r"source_training\[0\]: .*la\.png has 2 channels .*in_channels 1"):
        load_uda_datalist(_write(dl, tmp))


def test_rgb_images_fit_a_grey_datalist(good):
    dl, tmp = good
    dl["target_training"][0]["image"] = _png(tmp / "rgb.png", np.zeros((32, 32, 3), np.uint8))
    assert load_uda_datalist(_write(dl, tmp))["target_training"][0]["image"].endswith("rgb.png")
