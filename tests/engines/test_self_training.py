import json
import os
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_uda.engines.self_training import STATE_FILE, PseudoLabelRounds
from monai_uda.utils import IGNORE_INDEX


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
    assert set(np.unique(lab)) <= {0, 1, IGNORE_INDEX} and (lab == IGNORE_INDEX).sum() > 0

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


# ------------------------------------------------------------------------ the engine around the driver
from monai.inferers import SimpleInferer, sliding_window_inference  # noqa: E402

from monai_uda.engines.pseudo_labellers import ArgmaxLabeller  # noqa: E402
from monai_uda.engines.self_training import (  # noqa: E402
    ImageWindowInferer,
    RoundTrainer,
    SelfTraining,
    SlidingWindowPredictor,
    reset_parameters,
    split_epochs,
)
from monai_uda.losses import PseudoLabelCrossEntropyLoss  # noqa: E402
from monai_uda.transforms import segmentation_transforms  # noqa: E402


def test_split_epochs():
    assert split_epochs(20, 3) == [7, 7, 6] and sum(split_epochs(20, 3)) == 20
    assert split_epochs(5, 3) == [2, 2, 1] and split_epochs(2, 2) == [1, 1]
    with pytest.raises(ValueError, match="num_rounds"):
        split_epochs(1, 2)
    with pytest.raises(ValueError, match="num_rounds"):
        split_epochs(3, 0)


class Signed(torch.nn.Module):
    """logits (-x, x) of a 1-channel image: class-1 probability sigmoid(2 x)."""

    def forward(self, x):
        return torch.cat([-x, x], 1)


def test_predictor_inverts_3d_orientation_to_the_file_grid(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.standard_normal((6, 5, 4)).astype(np.float32) + 3.0  # all non-zero: the z-score uses every voxel
    affine = np.diag([-1.5, 1.0, 2.0, 1.0])  # x runs right-to-left: orientation to RAS flips it
    path = str(tmp_path / "vol.nii.gz")
    nib.save(nib.Nifti1Image(arr, affine), path)
    predictor = SlidingWindowPredictor(segmentation_transforms("target", spatial_dims=3), SimpleInferer())
    net = Signed()
    (item, probs), = list(predictor(net, [{"image": path}]))
    assert item == {"image": path} and probs.shape == (2, 6, 5, 4)
    z = (arr - arr.mean()) / arr.std()
    np.testing.assert_allclose(np.asarray(probs[1]), 1 / (1 + np.exp(-2 * z)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(probs.affine), affine, atol=1e-6)  # the file's grid, not RAS

    # a forward hook: more maps, inverted the same way, yielded as extras
    def forward(network, image):
        return {"pred": predictor.probabilities(network, image), "aux": image}

    (_, probs2, extras), = list(predictor.predict(net, [{"image": path}], forward=forward))
    assert torch.equal(torch.as_tensor(probs2), torch.as_tensor(probs)) and set(extras) == {"aux"}
    np.testing.assert_allclose(np.asarray(extras["aux"][0]), z, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError, match="pred"):
        list(predictor.predict(net, [{"image": path}], forward=lambda n, x: {"p": x}))


def test_predictor_2d_keeps_the_array_space(tmp_path):
    items = _items(tmp_path, n=2)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    net.train()
    out = list(SlidingWindowPredictor(segmentation_transforms("target", spatial_dims=2), SimpleInferer())(net, items))
    assert not net.training  # the default forward runs in evaluation mode
    for (item, probs), it in zip(out, items):
        x = torch.as_tensor(nib.load(it["image"]).get_fdata(), dtype=torch.float32)[None, None]
        with torch.no_grad():
            expected = torch.softmax(net((x - x.mean()) / x.std(unbiased=False)), 1)[0]
        assert item is it and probs.shape == (2, 8, 8)
        torch.testing.assert_close(torch.as_tensor(probs), expected, rtol=1e-5, atol=1e-5)


def test_image_window_inferer():
    inf = ImageWindowInferer([32, 32], max_side=64, multiple=16)
    assert inf.window([40, 150]) == [48, 64]  # rounded up to 16, capped at 64
    assert inf.window([10, 20]) == [16, 32]
    assert ImageWindowInferer([80, 32], max_side=64).window([200, 200]) == [80, 64]  # never below min_roi_size
    assert ImageWindowInferer([32, 32], roi_size=[16, 48]).window([200, 9]) == [16, 48]
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    x = torch.randn(1, 1, 40, 70)
    with torch.no_grad():
        torch.testing.assert_close(inf(x, net), sliding_window_inference(x, [48, 64], 4, net, 0.25))
    with pytest.raises(ValueError, match="divisible"):
        ImageWindowInferer([32, 32], roi_size=[20, 32])


def _pseudo_items(tmp_path, n=3, side=16):
    """2D images with pseudo-labels: class 1 where the image is positive, a band ignored (255)."""
    rng = np.random.default_rng(2)
    items = []
    for i in range(n):
        img = rng.standard_normal((side, side)).astype(np.float32)
        lab = (img > 0).astype(np.uint8)
        lab[:, :3] = IGNORE_INDEX
        ip, lp = str(tmp_path / f"p{i}.nii.gz"), str(tmp_path / f"p{i}_lab.nii.gz")
        nib.save(nib.Nifti1Image(img, np.eye(4)), ip)
        nib.save(nib.Nifti1Image(lab, np.eye(4)), lp)
        items.append({"image": ip, "label": lp})
    return items


def _train_tf():
    return segmentation_transforms("train", spatial_dims=2, roi_size=[16, 16], num_samples=1, pos_fraction=0.0,
                                   label_map={}, binarize=False, augment=False)


def test_round_trainer_builds_a_trainer_per_round(tmp_path):
    from functools import partial

    items = _pseudo_items(tmp_path)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rt = RoundTrainer(_train_tf(), partial(torch.optim.Adam, lr=1e-2), PseudoLabelCrossEntropyLoss(), epochs=[2, 1],
                      batch_size=2, epoch_length=3, progress=False)
    assert rt(net, items, 1) is net
    first = rt.trainer
    rt(net, items, 2)
    assert rt.trainer is not first and rt.trainer.optimizer is not first.optimizer  # a fresh optimiser per round
    assert [(h["round"], h["epochs"], h["iterations"]) for h in rt.history] == [(1, 2, 6), (2, 1, 3)]
    assert all(np.isfinite(h["train_loss"]) for h in rt.history)
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert type(rt.trainer).__name__ == "SupervisedTrainer" and isinstance(rt.trainer.inferer, SimpleInferer)
    with pytest.raises(ValueError, match="round 3"):
        rt(net, items, 3)


def test_round_trainer_optimizer_instance_class_handlers_and_labelled_items(tmp_path):
    from monai.engines import SupervisedTrainer

    items = _pseudo_items(tmp_path)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    built, attached = [], []

    class Recording(SupervisedTrainer):
        def __init__(self, *args, tag=None, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(tag)

    class Handler:
        def attach(self, engine):
            attached.append(engine)

    (tmp_path / "src").mkdir()
    labelled = _pseudo_items(tmp_path / "src", n=2)  # e.g. labelled source items trained along every round
    rt = RoundTrainer(_train_tf(), opt, PseudoLabelCrossEntropyLoss(), epochs=1, trainer_class=Recording,
                      batch_size=1, epoch_length=2, train_handlers=[Handler()], trainer_kwargs={"tag": "x"},
                      labelled_items=labelled, labelled_transform=_train_tf(), progress=False)
    rt(net, items, 1)
    first = rt.trainer
    rt(net, items, 2)
    assert built == ["x", "x"] and attached == [first, rt.trainer]  # the handlers go on every round's trainer
    assert rt.trainer.optimizer is opt and len(rt.trainer.data_loader.dataset) == len(items) + len(labelled)
    assert int(opt.state[net.weight]["momentum_buffer"].abs().sum() > 0)  # the state carried over the rounds
    with pytest.raises(ValueError, match="does not hold"):
        rt(torch.nn.Conv2d(1, 2, 3, padding=1), items, 1)  # a fresh model needs an optimizer factory
    with pytest.raises(ValueError, match="labelled_transform"):
        RoundTrainer(_train_tf(), opt, PseudoLabelCrossEntropyLoss(), labelled_items=labelled)


def test_round_trainer_stops_on_a_non_finite_loss(tmp_path):
    from functools import partial

    rt = RoundTrainer(_train_tf(), partial(torch.optim.SGD, lr=0.1), lambda logits, label: logits.sum() * float("nan"),
                      epochs=1, batch_size=1, epoch_length=2, progress=False, name="nan-test")
    with pytest.raises(FloatingPointError, match="nan-test"):
        rt(torch.nn.Conv2d(1, 2, 3, padding=1), _pseudo_items(tmp_path), 1)


class Wrapped(torch.nn.Module):
    """A segmentation network plus a training-only parameter, with its own reset_parameters."""

    def __init__(self):
        super().__init__()
        self.network = torch.nn.Conv2d(1, 2, 1)
        self.extra = torch.nn.Parameter(torch.full((1,), 7.0))

    def forward(self, x):
        return self.network(x) * self.extra

    def reset_parameters(self):
        with torch.no_grad():
            self.extra.fill_(7.0)


def test_reset_parameters_wrapper_last():
    m = Wrapped()
    with torch.no_grad():
        m.extra.fill_(1.0)
        m.network.weight.fill_(5.0)
    assert reset_parameters(m) is m
    assert m.extra.item() == 7.0 and not torch.all(m.network.weight == 5.0)


class BiasTrain:
    """train_fn adding 0.1 to the conv bias; records the bias each round started from."""

    def __init__(self):
        self.epochs, self.history, self.started = [1, 1, 1], [], []

    def __call__(self, model, datalist, r):
        net = model.network if isinstance(model, Wrapped) else model
        self.started.append(float(net.bias[1].detach()))
        with torch.no_grad():
            net.bias += 0.1
        self.history.append({"round": r, "train_loss": 0.5 / r})
        return model


def _engine(tmp_path, items, **kw):
    tf = segmentation_transforms("target", spatial_dims=2)
    kw.setdefault("predictor", SlidingWindowPredictor(tf, SimpleInferer()))
    kw.setdefault("train_fn", BiasTrain())
    return SelfTraining(items=items, output_dir=str(tmp_path / "rounds"), progress=False, **kw)


def test_self_training_exports_the_segmentation_network_and_a_summary(tmp_path):
    items = _items(tmp_path)
    model = Wrapped()
    with torch.no_grad():  # class 1 where the image is positive: about half foreground, never a collapse
        model.network.weight.copy_(torch.tensor([-1.0, 1.0]).view(2, 1, 1, 1))
        model.network.bias.zero_()
    export = torch.nn.Conv2d(1, 2, 1)
    default = SlidingWindowPredictor(segmentation_transforms("target", spatial_dims=2), SimpleInferer())
    got = []

    def predictor(net, its):
        got.append(net)
        return default(net, its)

    st = _engine(tmp_path, items, network=model, num_rounds=2, segmentation_network=lambda m: m.network,
                 predictor=predictor,
                 export_network=export, checkpoint=str(tmp_path / "out" / "model.pt"),
                 full_checkpoint=str(tmp_path / "out" / "full.pt"), summary_file=str(tmp_path / "out" / "s.json"),
                 summary={"method": "unit"})
    b0 = float(model.network.bias[1].detach())
    final = st.run()
    assert final is model and st.train_fn.started == pytest.approx([b0, b0 + 0.1])  # fine-tuned round after round
    assert got == [model.network] * 3  # the segmentation network labels (rounds 0, 1, 2), not the wrapper
    saved = torch.load(tmp_path / "out" / "model.pt", weights_only=True)
    assert set(saved) == {"weight", "bias"} and torch.equal(saved["bias"], model.network.bias.detach())
    full = torch.load(tmp_path / "out" / "full.pt", weights_only=True)
    assert set(full) == {"network.weight", "network.bias", "extra"}
    summary = json.loads((tmp_path / "out" / "s.json").read_text())
    fg = {str(k): v for k, v in st.summary["foreground_fraction"].items()}  # JSON keys are strings
    assert summary == st.summary | {"foreground_fraction": fg}
    assert summary["method"] == "unit" and summary["num_rounds"] == 2 and summary["round_init"] == "finetune"
    assert summary["epochs_per_round"] == [1, 1, 1] and [h["round"] for h in summary["train_history"]] == [1, 2]
    assert sorted(summary["foreground_fraction"]) == ["0", "1", "2"] and summary["collapsed_rounds"] == []
    assert summary["checkpoint"] == str(tmp_path / "out" / "model.pt") and summary["adapt_seconds"] >= 0
    # a segmentation network that does not fit the export network is refused, naming it
    with pytest.raises(RuntimeError, match="export_network"):
        _engine(tmp_path / "bad", items, network=Wrapped(), num_rounds=0, segmentation_network=lambda m: m.network,
                export_network=torch.nn.Conv2d(1, 3, 1), checkpoint=str(tmp_path / "bad.pt")).run()


def test_self_training_round_init_source_and_random_survive_resume(tmp_path):
    items = _items(tmp_path)
    net = torch.nn.Conv2d(1, 2, 1)
    start_bias = float(net.bias[1].detach())
    train = BiasTrain()
    st = _engine(tmp_path, items, network=net, num_rounds=2, round_init="source", train_fn=train)
    st.run()
    assert train.started == pytest.approx([start_bias, start_bias])  # every round restarts from the source
    state = st.rounds.load_state()
    assert [state["rounds"][str(r)]["fresh_model"] for r in range(3)] == [False, True, True]
    # resume with one more round: run() loads round 2 into the network, the restart point stays the source
    st3 = _engine(tmp_path, items, network=net, num_rounds=3, round_init="source", train_fn=train)
    st3.run()
    assert train.started == pytest.approx([start_bias] * 3)
    assert float(net.bias[1].detach()) == pytest.approx(start_bias + 0.1)

    wrapped = Wrapped()
    with torch.no_grad():
        wrapped.extra.fill_(1.0)
    made = []
    rnd = _engine(tmp_path / "r", items, network=wrapped, num_rounds=1, round_init="random",
                  segmentation_network=lambda m: m.network, train_fn=lambda m, d, r: made.append(m) or m)
    rnd.run()
    assert made[0] is not wrapped and made[0].extra.item() == 7.0  # re-initialised copy, the wrapper's own reset
    with pytest.raises(ValueError, match="round_init"):
        _engine(tmp_path, items, network=net, round_init="restart")


def test_self_training_resume_false_starts_over(tmp_path):
    items = _items(tmp_path)
    train = BiasTrain()
    _engine(tmp_path, items, network=torch.nn.Conv2d(1, 2, 1), num_rounds=1, train_fn=train).run()
    _engine(tmp_path, items, network=torch.nn.Conv2d(1, 2, 1), num_rounds=1, train_fn=train).run()
    assert len(train.started) == 1  # resumed: nothing left to do
    (tmp_path / "rounds" / "keep.txt").write_text("x")
    _engine(tmp_path, items, network=torch.nn.Conv2d(1, 2, 1), num_rounds=1, train_fn=train, resume=False).run()
    assert len(train.started) == 2 and (tmp_path / "rounds" / "keep.txt").exists()


def test_labeller_with_its_own_predict_and_extras(tmp_path):
    items = _items(tmp_path, n=2)

    class Confident:
        """predict() yields a confidence map; __call__ ignores the pixels below 0.6."""

        def __init__(self):
            self.seen = []

        def predict(self, model, its):
            for it in its:
                x = torch.as_tensor(nib.load(it["image"]).get_fdata(), dtype=torch.float32)
                probs = torch.softmax(model(x[None, None])[0], 0)
                yield it, probs, {"confidence": probs.max(0).values}

        def __call__(self, probs, r, confidence=None):
            self.seen.append(confidence is not None)
            return probs.argmax(0), confidence > 0.6

    lab = Confident()
    net = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():  # logits (-x, x): confidence sigmoid(2|x|) of a standard normal image, some below 0.6
        net.weight.copy_(torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1))
        net.bias.zero_()
    st = _engine(tmp_path, items, network=net, num_rounds=0, pseudo_labeller=lab, predictor=None)
    st.run()
    assert lab.seen == [True, True]
    out = np.asarray(nib.load(st.rounds.pseudo_datalist(0, items)[0]["label"]).dataobj)
    assert IGNORE_INDEX in out and set(np.unique(out)) <= {0, 1, IGNORE_INDEX}
    with pytest.raises(ValueError, match="predictor"):
        SelfTraining(torch.nn.Conv2d(1, 2, 1), items, str(tmp_path / "x"), BiasTrain(),
                     pseudo_labeller=ArgmaxLabeller())
    with pytest.raises(TypeError, match="unwrapped"):
        SelfTraining(torch.nn.DataParallel(torch.nn.Conv2d(1, 2, 1)), items, str(tmp_path / "x"), BiasTrain(),
                     predictor=lambda m, i: iter(()))


def test_self_training_with_the_round_trainer_end_to_end(tmp_path):
    from functools import partial

    items = _items(tmp_path, n=3)
    for it in items:  # 16x16 images so that 16x16 crops fit
        arr = np.random.default_rng(3).standard_normal((16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), it["image"])
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    rt = RoundTrainer(_train_tf(), partial(torch.optim.Adam, lr=1e-2), PseudoLabelCrossEntropyLoss(),
                      epochs=split_epochs(3, 2), batch_size=2, epoch_length=2, progress=False)
    st = _engine(tmp_path, items, network=net, num_rounds=2, train_fn=rt, checkpoint=str(tmp_path / "m.pt"),
                 summary_file=str(tmp_path / "s.json"))
    st.run()
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["epochs_per_round"] == [2, 1]
    assert [(h["round"], h["iterations"]) for h in summary["train_history"]] == [(1, 4), (2, 2)]
    final = torch.load(tmp_path / "m.pt", weights_only=True)
    r2 = torch.load(tmp_path / "rounds" / "round_2" / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], r2[k]) for k in final)


# ------------------------------------------------------------------------------------------ 2 gloo ranks
def _ddp_worker(rank: int, world: int, init_file: str, tmp: str, items: list) -> None:
    from functools import partial

    import torch.distributed as dist

    os.environ["RANK"] = str(rank)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
        net = torch.nn.Conv2d(1, 2, 3, padding=1)
        rt = RoundTrainer(_train_tf(), partial(torch.optim.SGD, lr=0.1), PseudoLabelCrossEntropyLoss(), epochs=1,
                          batch_size=1, distributed=True, progress=False)
        st = SelfTraining(net, items, os.path.join(tmp, "rounds"), rt, num_rounds=2, distributed=True,
                          predictor=SlidingWindowPredictor(segmentation_transforms("target", spatial_dims=2),
                                                           SimpleInferer()),
                          checkpoint=os.path.join(tmp, "model.pt"), summary_file=os.path.join(tmp, "s.json"),
                          progress=False)
        model = st.run()
        torch.save(model.state_dict(), os.path.join(tmp, f"rank{rank}.pt"))
        with open(os.path.join(tmp, f"rank{rank}.json"), "w") as f:
            json.dump({"history": rt.history, "summary_rounds": st.summary["num_rounds"]}, f)
    finally:
        dist.destroy_process_group()


def test_round_trainer_ddp_two_ranks(tmp_path):
    """Both ranks train every round on their shard of the pseudo-labelled items with synchronised weights; rank 0
    alone writes the rounds, the checkpoint and the summary (the other rank receives the summary)."""
    import torch.multiprocessing as mp

    items = _items(tmp_path, n=3)
    for k, it in enumerate(items):  # 16x16 images so that 16x16 crops fit
        arr = np.random.default_rng(k).standard_normal((16, 16)).astype(np.float32)
        nib.save(nib.Nifti1Image(arr, np.eye(4)), it["image"])
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "pg_init"), str(tmp_path), items), nprocs=2, join=True)
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(torch.equal(final[k], w0[k]) for k in w0)
    for r in range(2):
        out = json.loads((tmp_path / f"rank{r}.json").read_text())
        # 3 items, even shards of 2 per rank, batch 1: 2 iterations per round on each rank
        assert [(h["round"], h["iterations"]) for h in out["history"]] == [(1, 2), (2, 2)]
        assert out["summary_rounds"] == 2
    assert json.loads((tmp_path / "rounds" / STATE_FILE).read_text())["completed"] == [0, 1, 2]


def test_round_trainer_data_order_does_not_depend_on_a_loss_with_its_own_random_stream(tmp_path):
    """BUDA-Seg's ε must not change the data order: a loss that draws from its own stream sees the same batches
    as one that draws nothing, and the engine restarts that stream at every round (exact resume)."""
    from functools import partial

    from ignite.engine import Events

    class NoisyLoss(PseudoLabelCrossEntropyLoss):
        def __init__(self):
            super().__init__()
            self.seeds, self.generator = [], None

        def set_random_state(self, seed):
            self.seeds.append(seed)
            self.generator = torch.Generator().manual_seed(seed)

        def forward(self, logits, label):
            torch.randn(100, generator=self.generator)
            return super().forward(logits, label)

    items = _pseudo_items(tmp_path)

    seen = {}
    for name, loss in (("plain", PseudoLabelCrossEntropyLoss()), ("noisy", NoisyLoss())):
        rt = RoundTrainer(_train_tf(), partial(torch.optim.Adam, lr=1e-2), loss, epochs=[2, 1], batch_size=2,
                          epoch_length=2, progress=False, seed=3, train_handlers=[])
        rec = seen.setdefault(name, [])

        class Recorder:
            def attach(self, engine, rec=rec):
                engine.add_event_handler(Events.ITERATION_STARTED, lambda e: rec.append(e.state.batch["image"].clone()))

        rt.train_handlers = [Recorder()]
        net = torch.nn.Conv2d(1, 2, 3, padding=1)
        for r in (1, 2):
            rt(net, items, r)
    assert len(seen["plain"]) == len(seen["noisy"]) == 6
    assert all(torch.equal(a, b) for a, b in zip(seen["plain"], seen["noisy"]))
    assert loss.seeds == [4, 5]  # seed + round, at the start of each round
