import numpy as np
import pytest
import torch

from monai_uda.methods.shallow2deep.forests import predict_foreground, train_source_forests
from monai_uda.methods.shallow2deep.s2d import ENHANCER_INPUT_KEY, RF_PROBABILITY
from monai_uda.methods.shallow2deep.pixel_features import PixelFeatures
from monai_uda.methods.shallow2deep.random_forest_probability import ForestProbabilityd, RandForestProbabilityd

FEATS = PixelFeatures(sigmas=(0.7, 1.6), features=("gaussian", "ggm"))


@pytest.fixture(scope="module")
def forests():
    rng = np.random.default_rng(0)
    img = rng.normal(size=(40, 40)).astype(np.float32)
    lab = np.zeros((40, 40), np.uint8)
    lab[10:30, 10:30] = 1
    img += 3 * lab
    return train_source_forests([img], [lab], n_forests=3, patch_size_range=(20, 40), samples_per_class=50,
                                n_estimators=2, features=FEATS, n_jobs=1, progress=False), img, lab


def test_draws_a_forest_drops_image_and_crops_margin(forests):
    fs, img, lab = forests
    t = RandForestProbabilityd("image", fs, FEATS.get_config(), crop_keys="label", margin=4)
    t.set_random_state(3)
    out = t({"image": torch.as_tensor(img)[None], "label": torch.as_tensor(lab)[None]})
    assert set(out) == {"rf_prob", "label"}
    k = out["rf_prob"].meta["s2d_forest_index"]
    assert out["rf_prob"].meta[ENHANCER_INPUT_KEY] == RF_PROBABILITY
    assert out["rf_prob"].shape == out["label"].shape == (1, 32, 32)
    expected = predict_foreground(fs[k], FEATS(img[None]))[:, 4:-4, 4:-4]
    np.testing.assert_allclose(out["rf_prob"].numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(out["label"].numpy(), lab[None, 4:-4, 4:-4])
    seen = {t({"image": img[None]})["rf_prob"].meta["s2d_forest_index"] for _ in range(30)}
    assert seen == {0, 1, 2}  # every forest gets drawn


def test_errors(forests):
    fs, img, _ = forests
    with pytest.raises(ValueError, match="empty"):
        RandForestProbabilityd("image", [], FEATS)
    with pytest.raises(ValueError, match="exactly one"):
        RandForestProbabilityd(["image", "other"], fs, FEATS)
    with pytest.raises(ValueError, match="too small"):
        RandForestProbabilityd("image", fs, FEATS, margin=20)({"image": img[None]})


def test_the_item_names_its_forest_so_validation_is_the_same_every_epoch(forests):
    fs, img, lab = forests
    t = ForestProbabilityd("image", fs, FEATS.get_config())
    for k in (0, 2, 4):  # 4 -> forest 1 (modulo the number of forests)
        item = {"image": torch.as_tensor(img)[None], "label": torch.as_tensor(lab)[None], "forest_index": k}
        out = t(item)
        assert set(out) == {"rf_prob", "label"} and out["rf_prob"].meta["s2d_forest_index"] == k % 3
        np.testing.assert_allclose(out["rf_prob"].numpy(), predict_foreground(fs[k % 3], FEATS(img[None])), rtol=1e-6)
        np.testing.assert_array_equal(t(item)["rf_prob"].numpy(), out["rf_prob"].numpy())  # no draw
    assert t({"image": img[None]})["rf_prob"].meta["s2d_forest_index"] == 0  # no index: the first forest
