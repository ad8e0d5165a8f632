"""PAST's intensity translator: the map, the patch distance, the inverse, the search, and that it translates the demo pair."""

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from monai_uda.methods.past.cyclegan_networks import CycleGAN
from monai_uda.methods.past.intensity_translator import (
    IntensityMapGenerator,
    IntensityTranslator,
    IntensityTranslatorTrainer,
    PiecewiseLinearMap,
    SlicedPatchDistance,
    cycle_error,
    fit_inverse,
)
from monai_uda.methods.past.past import load_generator

#: mean |F(T(x)) - x| / mean |x|, measured on the tiny demo pair with the test's budget (30 generations of 8):
#: 0.006-0.018 over seeds 0-4 (full demo pair, bundle defaults: 0.003-0.041 over seeds 0-2; the CycleGAN without
#: residual output: 0.66; docs/benchmarks/past_translator/); the bound leaves a margin of 5x
CYCLE_BOUND = 0.1
#: the translation must move the image: mean |T(x) - x| / mean |x|, measured 0.43-0.51 over seeds 0-4 (the identity: 0)
MOVE_MIN = 0.2


def test_piecewise_linear_map_interpolates_and_keeps_zero():
    m = PiecewiseLinearMap(1, 3)
    m.set_knots(torch.tensor([[-1.0, 0.5, 2.0]]), torch.tensor([[1.0, -1.0, 3.0]]))
    x = torch.tensor([-5.0, -1.0, -0.25, 0.5, 1.25, 2.0, 9.0, 0.0]).view(1, 1, 8)
    y = m(x).flatten().tolist()
    assert y[:7] == pytest.approx([1.0, 1.0, 0.0, -1.0, 1.0, 3.0, 3.0])  # constant outside the knots
    assert y[7] == 0.0  # exact zeros stay zero (the 3D background)
    m.keep_zero = False
    assert m(x).flatten()[7].item() == pytest.approx(-1.0 / 3)
    with pytest.raises(ValueError, match="strictly increasing"):
        m.set_knots(torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 2.0]]))


def test_translator_state_dict_round_trip_with_fitted_knots_and_rebuild(tmp_path):
    tr = IntensityTranslator(num_knots=12)
    tr.g_st.mapping.set_knots(torch.tensor([[-1.0, 0.0, 1.0, 2.0]]), torch.tensor([[2.0, -1.0, 0.5, 0.0]]))
    ckpt = tmp_path / "t.pt"
    torch.save({"cyclegan": tr.state_dict()}, ckpt)
    x = torch.randn(1, 1, 8, 8)
    # the bundle's translate step gives a new IntensityTranslator (12 knots), the figure a CycleGAN: both load it
    for given in (IntensityTranslator(num_knots=12), CycleGAN()):
        g = load_generator(given, str(ckpt))
        assert isinstance(g, IntensityMapGenerator) and torch.equal(g(x), tr.g_st(x))
    with pytest.raises(ValueError, match="holds a CycleGAN"):
        torch.save({"cyclegan": CycleGAN().state_dict()}, tmp_path / "c.pt")
        load_generator(IntensityTranslator(), str(tmp_path / "c.pt"))


def test_sliced_patch_distance_separates_domains_and_centering_ignores_a_constant():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 1, 32, 32, generator=g)
    b = torch.randn(4, 1, 32, 32, generator=g)
    d = SlicedPatchDistance(a, b, patch=5, pool=2, samples=2048, seed=0)
    same = d.distance(a)
    assert d.distance(3 * a) > 10 * same  # other contrast: far
    assert d.distance(a + 5) == pytest.approx(same, rel=1e-4)  # centred patches: a constant is not a difference
    raw = SlicedPatchDistance(a, b, patch=5, pool=2, samples=2048, seed=0, centered=False)
    assert raw.distance(a + 5) > 10 * raw.distance(a)


def test_fit_inverse_and_cycle_error():
    x = torch.linspace(-2, 2, 5000)
    assert cycle_error(x, 3 * x + 1) < 1e-2  # an injective map: inverted exactly up to the binning
    k, v = fit_inverse(x, -x)
    assert torch.all(k[1:] > k[:-1])
    assert cycle_error(x, torch.zeros_like(x)) == pytest.approx(float(x.abs().mean()), rel=1e-3)  # nothing to invert


def _tiny_fit(uda, seed=0):
    from monai.utils import set_determinism

    from monai_uda.methods.past.past import translation_dataset

    set_determinism(seed)
    ds = translation_dataset(uda, patch_size=(64, 64), seed=seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, shuffle=True)
    tr = IntensityTranslator()
    trainer = IntensityTranslatorTrainer("cpu", 1, loader, tr, epoch_length=30, population=8, reference_batches=4,
                                         seed=seed)
    trainer.run()
    return tr, trainer


def test_the_search_never_rises(tiny_demo_2d, one_thread):
    from monai_uda.data import UDAData

    _, trainer = _tiny_fit(UDAData(tiny_demo_2d, deep=False))
    losses = [h["loss"] for h in trainer.history]
    assert len(losses) == 30 and all(b <= a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < losses[0] or sum(h["accepted"] for h in trainer.history) == 0


def test_translator_translates_the_demo_pair_with_a_small_cycle_error(tiny_demo_2d, one_thread):
    """Acceptance: T(x) differs from x (and its intensities move toward the target's), mean |F(T(x)) - x| / mean |x|
    stays below CYCLE_BOUND."""
    from monai_uda.data import UDAData
    from monai_uda.transforms import segmentation_transforms

    uda = UDAData(tiny_demo_2d, deep=False)
    tr, _ = _tiny_fit(uda)
    tf = segmentation_transforms("target", uda=uda)
    xs = torch.stack([torch.as_tensor(np.asarray(tf({"image": it["image"]})["image"])) for it in uda.split("source_training")])
    xt = torch.stack([torch.as_tensor(np.asarray(tf({"image": it["image"]})["image"])) for it in uda.split("target_training")])
    with torch.no_grad():
        y = tr.g_st(xs)
        c = tr.g_ts(y)
    move = float((y - xs).abs().mean() / xs.abs().mean())
    cycle = float((c - xs).abs().mean() / xs.abs().mean())
    assert move > MOVE_MIN, move
    assert cycle < CYCLE_BOUND, cycle
    z = lambda a: ((a - a.mean()) / a.std()).flatten().numpy()  # noqa: E731
    assert wasserstein_distance(z(y), z(xt)) < wasserstein_distance(z(xs), z(xt))
