"""Quick runner test of the cheap pixel-alignment baselines ``fda`` and ``histmatch`` (``past`` is covered by
tests/bundles/test_pixel_alignment_segmentation.py, which runs the same configs)."""

import numpy as np
import pandas as pd
import torch

from monai_uda.benchmarks.methods import METHODS, load_methods
from monai_uda.benchmarks.runner import run_benchmark


def test_past_family_registered():
    load_methods()
    assert {"past", "fda", "histmatch"} <= set(METHODS)


def test_aligned_transforms_change_source_only_in_intensity(tiny_demo_2d):
    from monai_uda.methods.past.past import aligned_training_transforms
    from monai_uda.data import UDAData

    uda = UDAData(tiny_demo_2d, deep=False)
    item = uda.split("source_training")[0]
    for alignment in ("fda", "histmatch"):
        tf = aligned_training_transforms(alignment, uda, roi_size=[32, 32], num_samples=1)
        names = [type(t).__name__ for t in tf.transforms]
        i = names.index("NormalizeIntensityd")
        assert names[i + 1].startswith("Rand") and ("Fourier" in names[i + 1] or "Histogram" in names[i + 1])
        pre = tf.transforms[: i + 1]
        x = item
        for t in pre:
            x = t(x)
        y = tf.transforms[i + 1](dict(x))
        assert y["image"].shape == x["image"].shape and torch.equal(torch.as_tensor(y["label"]), torch.as_tensor(x["label"]))
        assert not np.allclose(np.asarray(y["image"]), np.asarray(x["image"]))


def test_fda_histmatch_run_through_runner(tmp_path, tiny_demo_2d, monkeypatch):
    from monai_uda.benchmarks import runner

    b = dict(runner.BUDGETS["quick"][2], max_epochs=1, epoch_length=1, roi_size=[32, 32])
    monkeypatch.setitem(runner.BUDGETS["quick"], 2, b)
    run_benchmark(tiny_demo_2d, ["fda", "histmatch"], str(tmp_path), mode="quick", progress=False)
    csv = pd.read_csv(tmp_path / "results.csv")
    assert list(csv.method) == ["fda", "histmatch"]
    assert ((csv.dice >= 0) & (csv.dice <= 1)).all() and (csv.adapt_seconds > 0).all()


def test_aligned_transforms_grey_source_rgb_target(tmp_path):
    # C1-like pair: grey fluorescence source, RGB brightfield target; the references must be turned grey first
    import json

    from PIL import Image

    from monai_uda.methods.past.past import aligned_training_transforms
    from monai_uda.data import UDAData

    rng = np.random.default_rng(0)
    def png(name, arr):
        Image.fromarray(arr).save(tmp_path / name)
        return str(tmp_path / name)
    lab = np.zeros((32, 32), np.uint8)
    lab[8:20, 8:20] = 1
    src = {"image": png("s.png", rng.integers(0, 255, (32, 32), dtype=np.uint8)), "label": png("sl.png", lab)}
    tgt = png("t.png", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
    dl = {"name": "rgb", "spatial_dims": 2, "in_channels": 1, "labels": {"0": "background", "1": "fg"},
          "source_training": [src], "source_validation": [src], "target_training": [{"image": tgt}],
          "target_test": [{"image": tgt, "label": png("tl.png", lab)}]}
    (tmp_path / "dl.json").write_text(json.dumps(dl))
    uda = UDAData(str(tmp_path / "dl.json"), deep=False)
    for alignment in ("fda", "histmatch"):
        out = aligned_training_transforms(alignment, uda, roi_size=[16, 16], num_samples=1)(dict(src))
        x = out[0]["image"]
        assert x.shape == (1, 16, 16) and torch.isfinite(torch.as_tensor(x)).all()
