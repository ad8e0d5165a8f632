import pytest
import torch

from monai_uda.engines.pseudo_labellers import ArgmaxLabeller, SelfTrainingSelector, portion_schedule, portion_threshold
from monai_uda.utils import IGNORE_INDEX

# 7 pixels, 3 classes (columns = pixels); raw argmax / confidence per pixel:
# p0 0/.9  p1 0/.8  p2 0/.5  p3 1/.8  p4 1/.7  p5 2/.5  p6 2/.4
PROBS = torch.tensor(
    [
        [0.90, 0.80, 0.50, 0.10, 0.20, 0.30, 0.35],
        [0.05, 0.10, 0.05, 0.80, 0.70, 0.20, 0.25],
        [0.05, 0.10, 0.45, 0.10, 0.10, 0.50, 0.40],
    ]
)


def _sel(mode, p=0.5, **kw):
    return SelfTrainingSelector(mode=mode, portion=p, portion_step=0.0, max_portion=1.0, **kw)


def test_schedule_zou_defaults():
    assert [portion_schedule(r) for r in range(8)] == pytest.approx([0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.5])
    sel = SelfTrainingSelector("cbst", portion=0.1, portion_step=0.2, max_portion=0.6)
    assert [sel.portion_at(r) for r in range(4)] == pytest.approx([0.1, 0.3, 0.5, 0.6])


def test_portion_threshold_by_hand():
    conf = torch.tensor([0.9, 0.8, 0.5, 0.8, 0.7, 0.5, 0.4])
    # sorted desc: .9 .8 .8 .7 .5 .5 .4 ; floor(0.5 * 7) = 3 -> 0.7
    assert portion_threshold(conf, 0.5) == pytest.approx(0.7)
    assert portion_threshold(conf, 0.0) == pytest.approx(0.9)  # keeps nothing (strict >)
    assert portion_threshold(conf, 1.0) == float("-inf")
    assert portion_threshold(conf[:0], 0.5) == float("inf")


def test_st_global_portion():
    label, keep = _sel("st")(PROBS, 0)
    # lambda = 0.7 -> keep confidences > 0.7: p0, p1, p3, with their argmax labels
    assert label.shape == (7,) and label.dtype == torch.int64
    assert label.tolist() == [0, 0, 255, 1, 255, 255, 255]
    assert torch.equal(keep, label != 255)


def test_st_fixed_threshold():
    label, _ = _sel("st", threshold=0.75)(PROBS, 0)
    assert label.tolist() == [0, 0, 255, 1, 255, 255, 255]
    label, _ = _sel("st", threshold=0.45)(PROBS, 0)
    assert label.tolist() == [0, 0, 0, 1, 1, 2, 255]


def test_cbst_classwise_by_hand():
    sel = _sel("cbst")
    # class 0 confs (.9, .8, .5): floor(1.5)=1 -> .8 ; class 1 (.8, .7): -> .7 ; class 2 (.5, .4): -> .4
    assert sel.thresholds(PROBS, 0).tolist() == pytest.approx([0.8, 0.7, 0.4])
    label, keep = sel(PROBS, 0)
    # normalised P_c / lambda_c, keep if max > 1:
    # p0 1.125 (c0) ; p1 1.0 -> no ; p2 0.45/.4 = 1.125 (c2, raw argmax was c0: class balancing)
    # p3 .8/.7 (c1) ; p4 1.0 -> no ; p5 1.25 (c2) ; p6 1.0 -> no
    assert label.tolist() == [0, 255, 2, 1, 255, 2, 255]
    assert keep.tolist() == [True, False, True, True, False, True, False]


def test_cbst_keeps_top_portion_per_class_2d_binary():
    fg = torch.tensor([0.95, 0.9, 0.8, 0.6, 0.45, 0.3, 0.2, 0.05]).reshape(2, 4)
    probs = torch.stack([1 - fg, fg])
    label, _ = _sel("cbst")(probs, 0)
    # fg thresh = sorted(.95,.9,.8,.6)[2] = .8, bg thresh = sorted(.95,.8,.7,.55)[2] = .7 -> top 2 of each
    assert label.shape == (2, 4)
    assert label.reshape(-1).tolist() == [1, 1, 255, 255, 255, 255, 0, 0]


def test_round_schedule_changes_selection():
    sel = SelfTrainingSelector("st", portion=0.2, portion_step=0.3, max_portion=0.5)
    # round 0: floor(0.2*7)=1 -> thresh .8 -> only p0 ; round 1: p = .5 -> thresh .7
    assert (sel(PROBS, 0)[0] != 255).sum() == 1
    assert (sel(PROBS, 1)[0] != 255).sum() == 3


def test_fit_over_target_set():
    a = PROBS
    b = torch.tensor([[0.6, 0.55], [0.4, 0.45], [0.0, 0.0]])  # two low-confidence class-0 pixels
    sel = _sel("st")
    # all 9 confidences desc: .9 .8 .8 .7 .6 .55 .5 .5 .4 ; floor(4.5) = 4 -> 0.6
    assert sel.fit((m for m in [a, b]), 0).tolist() == pytest.approx([0.6])  # a generator, as the rounds driver passes
    label, _ = sel(a, 0)  # the set threshold is used instead of a's own (0.7)
    assert label.tolist() == [0, 0, 255, 1, 1, 255, 255]
    assert sel(b, 0)[0].tolist() == [255, 255]
    # another round has not been fitted: per-image thresholds
    assert sel(a, 1)[0].tolist() == [0, 0, 255, 1, 255, 255, 255]


def test_bad_inputs():
    with pytest.raises(ValueError, match="softmax"):
        _sel("st")(torch.rand(3, 4, 4) * 3, 0)
    with pytest.raises(ValueError, match="NaN"):
        _sel("cbst")(torch.full((2, 4), float("nan")), 0)
    with pytest.raises(ValueError, match="mode"):
        SelfTrainingSelector("xx")
    with pytest.raises(ValueError, match="threshold"):
        SelfTrainingSelector("cbst", threshold=0.9)


def test_argmax_labeller_labels_every_pixel():
    label = ArgmaxLabeller()(PROBS, 3)
    assert label.dtype == torch.int64 and label.tolist() == [0, 0, 0, 1, 1, 2, 2]  # nothing is ignored
    probs3d = torch.softmax(torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0)), 0)
    assert torch.equal(ArgmaxLabeller()(probs3d, 0), (probs3d[1] > probs3d[0]).long())
    with pytest.raises(ValueError, match="spatial"):
        ArgmaxLabeller()(torch.rand(4), 0)


def test_selectors_mark_unselected_pixels_with_the_one_ignore_index():
    assert IGNORE_INDEX == 255
    label, keep = _sel("cbst")(PROBS, 0)
    assert torch.equal(label == IGNORE_INDEX, ~keep)
    label, keep = _sel("st", ignore_value=9)(PROBS, 0)
    assert torch.equal(label == 9, ~keep)
