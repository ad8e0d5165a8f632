"""Target references of the FDA / histogram-matching baselines: loaded from files once, transformed, cached."""

import nibabel as nib
import numpy as np
import torch

from monai_uda.methods.past.target_references import TargetReferences


def test_files_are_loaded_transformed_and_cached(tmp_path):
    path = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(12, dtype=np.float32).reshape(3, 4), np.eye(4)), str(path))
    calls = []
    refs = TargetReferences([str(path), torch.ones(1, 3, 4)], transform=lambda x: calls.append(1) or x * 2)
    assert len(refs) == 2
    first = refs[0]
    assert tuple(first.shape) == (1, 3, 4) and float(first.max()) == 22.0  # channel first, transformed
    assert refs[0] is first and len(calls) == 1  # cached: neither loaded nor transformed again
    assert float(refs[1].sum()) == 24.0


def test_without_cache_every_access_loads_again(tmp_path):
    calls = []
    refs = TargetReferences([np.zeros((1, 2, 2))], transform=lambda x: calls.append(1) or x, cache=False)
    refs[0], refs[0]
    assert len(calls) == 2
