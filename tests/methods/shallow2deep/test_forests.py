import numpy as np
import pytest
from PIL import Image

from monai_uda.methods.shallow2deep.forests import (
    load_forests,
    predict_foreground,
    save_forests,
    scribble_training_set,
    train_scribble_forest,
    train_source_forests,
)
from monai_uda.methods.shallow2deep.pixel_features import PixelFeatures

FEATS = PixelFeatures(sigmas=(0.7, 1.6), features=("gaussian", "ggm"))


def _pair(seed=0, shape=(40, 40)):
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint8)
    lab[8:24, 10:30] = 1
    img = (rng.normal(0, 0.1, shape) + lab).astype(np.float32)
    return img, lab


def test_scribble_training_set_only_scribbled_pixels():
    rng = np.random.default_rng(1)
    feats = rng.random((3, 10, 12)).astype(np.float32)
    scr = np.zeros((1, 10, 12), np.uint8)
    scr[0, 1, 1:5] = 1
    scr[0, 7, 3:6] = 2
    x, y = scribble_training_set(feats, scr)
    assert x.shape == (7, 3)
    np.testing.assert_array_equal(y, [0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(x[0], feats[:, 1, 1])
    with pytest.raises(ValueError, match="only 0"):
        scribble_training_set(feats, np.full((10, 12), 3))


def test_scribble_forest_ignores_unlabelled_pixels():
    rng = np.random.default_rng(2)
    feats = rng.random((4, 16, 16)).astype(np.float32)
    scr = np.zeros((16, 16), np.uint8)
    scr[2, 2:10] = 1
    scr[12, 4:12] = 2
    f1 = train_scribble_forest(None, scr, precomputed_features=[feats], n_estimators=5, seed=3, n_jobs=1)
    changed = feats.copy()
    changed[:, scr == 0] = rng.random((4, int((scr == 0).sum())))  # everything unlabelled changes
    f2 = train_scribble_forest(None, scr, precomputed_features=[changed], n_estimators=5, seed=3, n_jobs=1)
    assert f1.s2d_n_train_ == f2.s2d_n_train_ == int((scr > 0).sum()) == 16
    probe = rng.random((4, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(predict_foreground(f1, probe), predict_foreground(f2, probe))
    # changing a scribbled pixel does change the training set (the test above can fail)
    changed[:, 12, 4] += 10.0
    assert not np.array_equal(scribble_training_set(changed, scr)[0], scribble_training_set(feats, scr)[0])


def test_scribble_forest_from_files_and_far_away_image_change(tmp_path):
    img, lab = _pair()
    scr = np.zeros_like(lab)
    scr[14:17, 14:20] = 2
    scr[30:33, 5:12] = 1
    Image.fromarray(scr).save(tmp_path / "scr.png")
    f1 = train_scribble_forest(img, tmp_path / "scr.png", features=FEATS, n_estimators=5, n_jobs=1)
    img2 = img.copy()
    img2[:, 36:] = 5.0  # > 3 * 1.6 pixels away from every scribble: features at scribbles unchanged
    f2 = train_scribble_forest([img2], [scr], features=FEATS, n_estimators=5, n_jobs=1)
    probe = FEATS(img[None])
    np.testing.assert_array_equal(predict_foreground(f1, probe), predict_foreground(f2, probe))
    prob = predict_foreground(f1, probe)
    assert prob.shape == (1, 40, 40) and prob[0][lab > 0].mean() > prob[0][lab == 0].mean() + 0.5
    with pytest.raises(ValueError, match="both background"):
        train_scribble_forest(img, (scr == 2).astype(np.uint8) * 2, features=FEATS, n_jobs=1)
    with pytest.raises(FileNotFoundError, match="scribbles"):
        train_scribble_forest(img, tmp_path / "missing.png", features=FEATS)


def test_source_forests_skip_single_class_patches():
    img, lab = _pair()
    blank_img, blank_lab = _pair(5)[0], np.zeros((40, 40), np.uint8)  # single-class image
    forests = train_source_forests(
        [blank_img, img], [blank_lab, lab], n_forests=4, patch_size_range=(8, 16), samples_per_class=20,
        seed=0, n_jobs=2, features=FEATS, n_estimators=3, progress=False,
    )
    assert len(forests) == 4
    for f in forests:
        assert f.s2d_patch_["image"] == 1  # never the all-background image
        (r, c), (h, w) = f.s2d_patch_["start"], f.s2d_patch_["size"]
        patch = lab[r : r + h, c : c + w]
        assert patch.min() == 0 and patch.max() == 1
        assert list(f.classes_) == [0, 1]
        n_fg, n_bg = int(patch.sum()), int((patch == 0).sum())
        assert f.s2d_patch_["n_train"] == min(20, n_fg) + min(20, n_bg)  # class-balanced sample
    assert forests[0].s2d_skipped_patches_ > 0
    with pytest.raises(RuntimeError, match="two-class"):
        train_source_forests([blank_img], [blank_lab], n_forests=1, features=FEATS, max_tries_factor=3, progress=False)


def test_save_load_roundtrip(tmp_path):
    img, lab = _pair()
    forests = train_source_forests([img], [lab], n_forests=2, patch_size_range=(16, 24), samples_per_class=30,
                                   n_jobs=1, features=FEATS, n_estimators=3, progress=False)
    path = save_forests(tmp_path / "sub" / "forests.joblib", forests, FEATS)
    assert sorted(p.name for p in path.parent.iterdir()) == ["forests.joblib"]  # no temp file left
    loaded, feats = load_forests(path)
    assert feats.get_config() == FEATS.get_config() and len(loaded) == 2
    x = FEATS(img[None])
    for a, b in zip(forests, loaded):
        np.testing.assert_array_equal(predict_foreground(a, x), predict_foreground(b, x))
    with pytest.raises(ValueError, match="F=4"):
        predict_foreground(loaded[0], img[None])  # raw image instead of features


def test_shards_interleave_back_to_the_single_process_forests():
    """Multi-GPU prepare_forests: rank r fits forests r, r + W, ...; interleaved, they are the full list."""
    from monai_uda.distributed import interleave_gathered

    img, lab = _pair()
    kw = dict(n_forests=5, patch_size_range=(16, 24), samples_per_class=30, n_jobs=1, features=FEATS,
              n_estimators=2, progress=False, seed=3)
    full = train_source_forests([img], [lab], **kw)
    shards = [train_source_forests([img], [lab], shard=(r, 2), **kw) for r in range(2)]
    assert [len(s) for s in shards] == [3, 2]
    merged = interleave_gathered(shards)
    x = FEATS(img[None])
    for a, b in zip(full, merged):
        assert a.s2d_patch_ == b.s2d_patch_
        np.testing.assert_array_equal(predict_foreground(a, x), predict_foreground(b, x))
    with pytest.raises(ValueError, match="shard"):
        train_source_forests([img], [lab], shard=(2, 2), **kw)
