"""The embedded demo pair: real anatomy, labels, and a real intensity shift between scanners."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from monai_uda.data import UDAData
from monai_uda.data.demo import ensure_demo_datalist


def test_demo_2d_is_a_valid_pair(tiny_demo_2d):
    u = UDAData(tiny_demo_2d)
    assert u.spatial_dims == 2 and u.num_classes == 2
    src = nib.load(u.split("source_training")[0]["image"])
    lab = np.asarray(nib.load(u.split("source_training")[0]["label"]).dataobj)
    assert src.shape == lab.shape and src.ndim == 2
    assert np.allclose(src.header.get_zooms()[:2], (2.0, 2.0))
    assert set(np.unique(lab)) == {0, 1} and 0.05 < lab.mean() < 0.6


def test_demo_shift_changes_tissue_contrast(tiny_demo_3d):
    u = UDAData(tiny_demo_3d)
    a = u.split("source_training")[0]
    b = u.split("oracle_training")[0]

    def wm_vs_rest(item):
        img = np.asarray(nib.load(item["image"]).dataobj, np.float32)
        lab = np.asarray(nib.load(item["label"]).dataobj) > 0
        brain = img > np.percentile(img, 60)
        return img[lab].mean() - img[brain & ~lab].mean()

    # scanner A: white matter brighter than the rest of the brain; scanner B: darker
    assert wm_vs_rest(a) > 0
    assert wm_vs_rest(b) < 0


def test_ensure_demo_reuses_existing(tiny_demo_2d):
    import os

    folder = os.path.dirname(tiny_demo_2d)
    mtime = os.path.getmtime(tiny_demo_2d)
    assert ensure_demo_datalist(folder, spatial_dims=2) == tiny_demo_2d
    assert os.path.getmtime(tiny_demo_2d) == mtime
