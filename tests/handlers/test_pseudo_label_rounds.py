import json
import os
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_uda.handlers.pseudo_label_rounds import IGNORE_VALUE, STATE_FILE, PseudoLabelRounds


class Tiny(torch.nn.Module):
    """A 'model' whose prediction is a fixed threshold on the image, shifted by a learnable bias."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        fg = x + self.bias
        return torch.stack([-fg, fg], 0)  # (2, *spatial) logits


def _items(tmp_path, n=3, dims=2):
    items = []
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.standard_normal((8, 8) if dims == 2 else (6, 6, 4)).astype(np.float32)
        path = str(tmp_path / f"img{i}.nii.gz")
        affine = np.diag([0.5, 0.7, 2.0, 1.0])
        affine[:3, 3] = [i, 2, 3]
        nib.save(nib.Nifti1Image(arr, affine), path)
        items.append({"image": path})
    return items


def predict(model, items):
    for it in items:
        x = torch.as_tensor(nib.load(it["image"]).get_fdata(), dtype=torch.float32)
        yield it, torch.softmax(model(x), 0)


class Counter:
    def __init__(self, crash_at=None):
        self.rounds, self.crash_at, self.models = [], crash_at, []

    def __call__(self, model, datalist, r):
        if r == self.crash_at:
            self.crash_at = None
            raise RuntimeError("simulated crash")
        assert all(d["pseudo_label_round"] == r - 1 and os.path.exists(d["label"]) for d in datalist)
        assert all("image" in d for d in datalist)
        self.rounds.append(r)
        self.models.append(model)
        with torch.no_grad():
            model.bias += 0.1
        return model


def test_rounds_files_and_resume_after_crash(tmp_path):
    items = _items(tmp_path)
    out = str(tmp_path / "rounds")
    predicted = []

    def counting_predict(model, its):
        predicted.append(float(model.bias.detach()))
        yield from predict(model, its)

    train = Counter(crash_at=2)
    rounds = PseudoLabelRounds(3, out, counting_predict, None, train, progress=False)
    with pytest.raises(RuntimeError, match="simulated crash"):
        rounds.run(Tiny(), items)
    state = json.load(open(os.path.join(out, STATE_FILE)))
    assert state["completed"] == [0, 1]
    assert train.rounds == [1] and len(predicted) == 2

    model = rounds.run(Tiny(), items)  # resume: rounds 0 and 1 are not redone
    assert train.rounds == [1, 2, 3]
    assert len(predicted) == 4
    assert predicted[2] == pytest.approx(0.2)  # round 2 fine-tuned the round-1 checkpoint
    assert model.bias.item() == pytest.approx(0.3)
    state = json.load(open(os.path.join(out, STATE_FILE)))
    assert state["completed"] == [0, 1, 2, 3]
    # files: one pseudo-label per item and round, source affine kept, no temporary files left
    for r in range(4):
        files = sorted(os.listdir(os.path.join(out, f"round_{r}")))
        assert files == ["img0.nii.gz", "img1.nii.gz", "img2.nii.gz", "model.pt"]
    img = nib.load(os.path.join(out, "round_3", "img1.nii.gz"))
    assert img.shape == (8, 8)
    assert np.allclose(img.affine, nib.load(items[1]["image"]).affine)
    x = nib.load(items[1]["image"]).get_fdata()
    assert np.array_equal(np.asarray(img.dataobj), (x + 0.3 > 0).astype(np.uint8))
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    # a third run does nothing but load the last checkpoint
    m = rounds.run(Tiny(), items)
    assert train.rounds == [1, 2, 3] and m.bias.item() == pytest.approx(0.3)


def test_fresh_model_per_round(tmp_path):
    items = _items(tmp_path, n=2)
    made = []

    def factory():
        made.append(Tiny())
        return made[-1]

    train = Counter()
    src = Tiny()
    rounds = PseudoLabelRounds(2, str(tmp_path / "r"), predict, None, train, model_factory=factory, progress=False)
    final = rounds.run(src, items)
    assert len(made) == 2 and train.models == made and final is made[-1]
    assert final.bias.item() == pytest.approx(0.1)  # trained once from scratch, not 0.2
    assert src.bias.item() == 0.0
    state = json.load(open(tmp_path / "r" / STATE_FILE))
    assert [state["rounds"][str(r)]["fresh_model"] for r in range(3)] == [False, True, True]

    train2 = Counter()
    fine = PseudoLabelRounds(2, str(tmp_path / "f"), predict, None, train2, progress=False).run(Tiny(), items)
    assert train2.models[0] is train2.models[1] is fine and fine.bias.item() == pytest.approx(0.2)


def test_collapse_warning(tmp_path):
    items = _items(tmp_path, n=2)

    def all_background(probs, r):
        lab = torch.zeros(probs.shape[1:], dtype=torch.long)
        lab[0, 0] = 1  # 1 foreground pixel of 64 per image
        return lab

    rounds = PseudoLabelRounds(
        0, str(tmp_path / "c"), predict, all_background, Counter(), collapse_threshold=0.02, progress=False
    )
    with pytest.warns(RuntimeWarning, match="collapsed"):
        rounds.run(Tiny(), items)
    state = json.load(open(tmp_path / "c" / STATE_FILE))
    assert state["rounds"]["0"]["collapsed"] is True
    assert state["rounds"]["0"]["foreground_fraction"] == pytest.approx(2 / 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PseudoLabelRounds(0, str(tmp_path / "ok"), predict, None, Counter(), progress=False).run(Tiny(), items)


def test_ignore_mask_weight_and_3d(tmp_path):
    items = _items(tmp_path, n=2, dims=3)

    def top_half(probs, r):
        conf, lab = probs.max(0)
        keep = conf >= conf.median()
        return lab, keep

    rounds = PseudoLabelRounds(0, str(tmp_path / "i"), predict, top_half, Counter(), progress=False)
    rounds.run(Tiny(), items)
    lab = np.asarray(nib.load(tmp_path / "i" / "round_0" / "img0.nii.gz").dataobj)
    assert lab.shape == (6, 6, 4) and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= {0, 1, IGNORE_VALUE} and (lab == IGNORE_VALUE).sum() > 0

    def weighted(probs, r):
        return probs.argmax(0), probs.max(0).values

    rounds = PseudoLabelRounds(0, str(tmp_path / "w"), predict, weighted, Counter(), progress=False)
    rounds.run(Tiny(), items)
    dl = rounds.pseudo_datalist(0, items)
    w = nib.load(dl[1]["weight"]).get_fdata()
    assert w.shape == (6, 6, 4) and w.min() >= 0.5 and dl[1]["image"] == items[1]["image"]


def test_fit_hook_and_errors(tmp_path):
    items = _items(tmp_path, n=2)

    class Global:
        def __init__(self):
            self.seen = 0

        def fit(self, probs_iter, r):
            self.seen = sum(1 for _ in probs_iter)

        def __call__(self, probs, r):
            return probs.argmax(0)

    sel = Global()
    PseudoLabelRounds(0, str(tmp_path / "g"), predict, sel, Counter(), progress=False).run(Tiny(), items)
    assert sel.seen == 2
    r = PseudoLabelRounds(1, str(tmp_path / "g"), predict, None, Counter(), progress=False)
    with pytest.raises(ValueError, match="target_items differ"):
        r.run(Tiny(), items[:1])
    bad = PseudoLabelRounds(
        0, str(tmp_path / "b"), predict, lambda p, r: torch.full(p.shape[1:], 7), Counter(), progress=False
    )
    with pytest.raises(ValueError, match="outside"):
        bad.run(Tiny(), items)
    with pytest.raises(ValueError, match="num_rounds"):
        PseudoLabelRounds(-1, str(tmp_path), predict, None, Counter())
    with pytest.raises(TypeError, match="train_fn"):
        PseudoLabelRounds(1, str(tmp_path), predict, None, None)
