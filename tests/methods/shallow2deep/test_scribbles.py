import numpy as np
import pytest
from scipy import ndimage as ndi

from monai_uda.methods.shallow2deep.scribbles import simulate_scribbles


def _gt():
    gt = np.zeros((64, 64), np.uint8)
    gt[10:30, 10:40] = 1
    gt[40:55, 35:60] = 1
    return gt


def test_strokes_inside_classes_away_from_boundaries():
    gt = _gt()
    scr = simulate_scribbles(gt, n_strokes=(2, 3), stroke_length=20, brush_radius=1, margin=2, seed=0)
    assert scr.shape == gt.shape and scr.dtype == np.uint8
    assert set(np.unique(scr)) == {0, 1, 2}
    # foreground strokes on foreground, background strokes on background, >= margin px from the boundary
    assert np.all(gt[scr == 2] == 1) and np.all(gt[scr == 1] == 0)
    fg_inner = ndi.binary_erosion(gt > 0, iterations=2, border_value=1)
    bg_inner = ndi.binary_erosion(gt == 0, iterations=2, border_value=1)
    assert np.all(fg_inner[scr == 2]) and np.all(bg_inner[scr == 1])
    assert (scr > 0).sum() < 0.2 * gt.size  # sparse


def test_deterministic_and_seed_dependent():
    gt = _gt()
    a = simulate_scribbles(gt[None], seed=7)
    assert a.shape == (1, 64, 64)
    np.testing.assert_array_equal(a, simulate_scribbles(gt[None], seed=7))
    assert not np.array_equal(a, simulate_scribbles(gt[None], seed=8))


def test_pixel_budget_and_stroke_count():
    gt = _gt()
    scr = simulate_scribbles(gt, n_strokes=5, stroke_length=50, max_pixels=(30, 12), seed=1)
    assert (scr == 1).sum() == 30 and (scr == 2).sum() == 12
    only_fg = simulate_scribbles(gt, n_strokes=(0, 1), brush_radius=0, seed=1)
    assert (only_fg == 1).sum() == 0 and 1 <= (only_fg == 2).sum() <= 41


def test_thin_objects_and_3d():
    gt = np.zeros((20, 20), np.uint8)
    gt[5:7, 2:18] = 1  # 2 px thick: erosion must shrink instead of dropping the class
    scr = simulate_scribbles(gt, n_strokes=1, margin=3, seed=0)
    assert (scr == 2).sum() > 0 and np.all(gt[scr == 2] == 1)
    vol = np.zeros((8, 16, 16), np.uint8)
    vol[2:6, 4:12, 4:12] = 1
    s3 = simulate_scribbles(vol, n_strokes=1, margin=0, brush_radius=0, seed=0)
    assert s3.shape == vol.shape and np.all(vol[s3 == 2] == 1) and np.all(vol[s3 == 1] == 0)
    with pytest.raises(ValueError, match="n_strokes"):
        simulate_scribbles(gt, n_strokes=(1, 2, 3))
