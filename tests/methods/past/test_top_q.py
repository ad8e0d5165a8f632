import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_uda.methods.past.top_q import (
    DatasetTopQSelector,
    TopQSelector,
    q_schedule,
    roi_box,
    roi_crop,
    roi_crop_transform,
    top_q_select,
)
from monai_uda.utils import IGNORE_INDEX


def _constructed():
    """15 pixels: 10 predicted as class 0 (conf 0.51..0.60 shuffled), 5 as class 1 (0.7..0.9)."""
    conf0 = torch.tensor([0.55, 0.51, 0.60, 0.53, 0.58, 0.52, 0.57, 0.54, 0.59, 0.56])
    conf1 = torch.tensor([0.80, 0.70, 0.90, 0.75, 0.85])
    p1 = torch.cat([1 - conf0, conf1])
    probs = torch.stack([1 - p1, p1]).reshape(2, 3, 5)
    return probs, conf0, conf1


def test_keeps_exactly_q_per_class():
    probs, conf0, conf1 = _constructed()
    label, keep = top_q_select(probs, 0.6)
    label, keep = label.reshape(-1), keep.reshape(-1)
    assert keep.dtype == torch.bool and label.dtype == torch.int64
    assert int((label == 0).sum()) == 6 and int((label == 1).sum()) == 3  # floor(0.6*10), floor(0.6*5)
    assert int((label == IGNORE_INDEX).sum()) == 6
    kept0 = set(conf0[keep[:10]].tolist())
    assert kept0 == set(torch.sort(conf0, descending=True).values[:6].tolist())  # the most confident ones
    assert keep[10:].tolist() == [True, False, True, False, True]  # 0.80, 0.90, 0.85 kept
    # q = 1 keeps everything as argmax, q = 0 nothing
    lab1, keep1 = top_q_select(probs, 1.0)
    assert keep1.all() and torch.equal(lab1, probs.argmax(0))
    assert not top_q_select(probs, 0.0)[1].any()


def test_exact_fraction_random_3d_and_float_rounding():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(3, 10, 10, 4, generator=g), 0)
    pred = probs.argmax(0)
    for q in (0.29, 0.5, 0.7):
        label, keep = top_q_select(probs, q)
        for c in range(3):
            n = int((pred == c).sum())
            assert int((label == c).sum()) == int(np.floor(q * n + 1e-6))
            assert torch.equal(label[keep], pred[keep])


def test_schedule_and_selector_signature():
    assert q_schedule(0) == 0.6 and q_schedule(1) == pytest.approx(0.8) and q_schedule(3) == 1.0
    sel = TopQSelector()
    probs, _, _ = _constructed()
    assert sel.q_at(0) == 0.6 and not hasattr(sel, "fit")  # the rounds driver skips the fit pass
    label, keep = sel(probs, 0)
    assert label.shape == probs.shape[1:] and int(keep.sum()) == 9
    assert int(sel(probs, 1)[1].sum()) == 8 + 4  # q = 0.8
    custom = TopQSelector(schedule=[0.2, 0.4])
    assert custom.q_at(0) == 0.2 and custom.q_at(5) == 0.4
    with pytest.raises(ValueError, match="schedule"):
        TopQSelector(schedule=[1.5])
    with pytest.raises(ValueError, match="probs"):
        top_q_select(torch.full((2, 3, 3), float("nan")), 0.5)
    with pytest.raises(TypeError, match="floating"):
        top_q_select(torch.ones(2, 3, 3, dtype=torch.long), 0.5)


def test_dataset_wide_selector():
    probs, conf0, conf1 = _constructed()
    a, b = probs[..., :2], probs[..., 2:]  # split the set in two images
    sel = DatasetTopQSelector()
    with pytest.raises(RuntimeError, match="fit"):
        sel(a, 0)
    th = sel.fit([a, b], 0)
    assert th[0].item() == pytest.approx(0.55) and th[1].item() == pytest.approx(0.8)
    kept = int(sel(a, 0)[1].sum()) + int(sel(b, 0)[1].sum())
    assert kept == 9


def test_roi_box_paper_values_and_crop():
    assert roi_box((448, 448, 40)) == ([112, 168, 0], [336, 336, 40])
    assert roi_box((384, 384)) == ([96, 96], [288, 288])
    img = MetaTensor(torch.arange(16 * 16 * 4, dtype=torch.float32).reshape(1, 16, 16, 4))
    out = roi_crop(img)
    assert out.shape == (1, 8, 6, 4)
    torch.testing.assert_close(out.as_tensor(), img.as_tensor()[:, 4:12, 6:12, :])
    assert out.affine[0, 3] == 4 and out.affine[1, 3] == 6  # world position kept
    d = roi_crop_transform(["image", "label"], fractions=((0.0, 0.5), (0.5, 1.0)))(
        {"image": torch.rand(1, 8, 8), "label": torch.zeros(1, 8, 8)}
    )
    assert d["image"].shape == d["label"].shape == (1, 4, 4)
    with pytest.raises(ValueError, match="fractions"):
        roi_box((8, 8), ((0.5, 0.2), (0, 1)))


@pytest.mark.parametrize("selector", [TopQSelector(), DatasetTopQSelector()])
def test_fits_pseudo_label_rounds_select_fn(tmp_path, selector):
    rounds_mod = pytest.importorskip("monai_uda.engines.self_training")
    import nibabel as nib

    probs, _, _ = _constructed()
    model = torch.nn.Linear(1, 1)
    items = [{"image": "a.nii.gz"}]
    driver = rounds_mod.PseudoLabelRounds(
        num_rounds=0, output_dir=str(tmp_path), predict_fn=lambda m, its: ((it, probs) for it in its),
        select_fn=selector, train_fn=lambda m, dl, r: m, progress=False,
    )
    driver.run(model, items)
    rec = driver.pseudo_datalist(0, items)[0]
    lab = np.asarray(nib.load(rec["label"]).dataobj)
    assert (lab == 0).sum() == 6 and (lab == 1).sum() == 3 and (lab == IGNORE_INDEX).sum() == 6
