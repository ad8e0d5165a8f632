"""Brushstroke simulator for benchmarks of shallow-to-deep (Matskevych et al.). **Benchmarks only.**

The method's target annotation is "a few brushstrokes" drawn by a user in ilastik. Benchmarks have no
user, so this module draws strokes from a ground truth. It reads target labels, which is exactly what a
user's eyes do; it must never be used inside an adaptation method on real data, where the scribbles come
from MONAI Label / a label file.

A stroke is a smooth random walk (a brush path) that starts at a random pixel of the class, turns by a
small random angle per step and stops when it would leave the class region, or after ``stroke_length``
steps. The path runs inside the class mask eroded by ``margin + brush_radius`` pixels and is then
dilated by ``brush_radius``: strokes never touch the object boundaries, as careful users draw them. If a
class region is too thin for the erosion, the erosion is reduced step by step (down to 0). Strokes are
added until ``n_strokes`` strokes or ``max_pixels`` pixels (whichever comes first) per class; the last
stroke is cut to the pixel budget. Output uses the MONAI Label convention
``0 = unlabelled, 1 = background, 2 = foreground``. The result is a deterministic function of the seed.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["simulate_scribbles"]


def _random_walk(mask: np.ndarray, start: np.ndarray, length: int, step: float, turn: float, rng: np.random.Generator):
    """Pixels of a smooth random walk inside ``mask`` (N-D)."""
    nd = mask.ndim
    direction = rng.normal(size=nd)
    direction /= np.linalg.norm(direction) + 1e-12
    pos = start.astype(float)
    path = [tuple(start)]
    for _ in range(length):
        direction = direction + turn * rng.normal(size=nd)
        direction /= np.linalg.norm(direction) + 1e-12
        nxt = pos + step * direction
        idx = tuple(np.round(nxt).astype(int))
        if any(i < 0 or i >= s for i, s in zip(idx, mask.shape)) or not mask[idx]:
            break
        pos = nxt
        if idx != path[-1]:
            path.append(idx)
    return path


def simulate_scribbles(
    label,
    n_strokes: int | tuple[int, int] = 3,
    stroke_length: int = 40,
    brush_radius: int = 1,
    margin: int = 2,
    max_pixels: int | tuple[int, int] | None = None,
    seed: int = 0,
    turn: float = 0.3,
) -> np.ndarray:
    """Draw simulated brushstrokes from a binary ground truth (benchmarks only, see module docstring).

    Args:
        label: ground truth, ``(*spatial)`` or ``(1, *spatial)``; values > 0 are foreground.
        n_strokes: strokes per class, an int or ``(background, foreground)``.
        stroke_length: maximum steps (about pixels) per stroke.
        brush_radius: brush radius in pixels (0 = one-pixel-wide strokes).
        margin: extra distance in pixels kept between strokes and the class boundary.
        max_pixels: pixel budget per class (int or ``(background, foreground)``), ``None`` = unlimited.
        seed: random seed (same seed, same strokes).
        turn: how much a stroke bends per step (std of the direction noise).

    Returns:
        ``uint8`` array of the input's shape: 0 = unlabelled, 1 = background, 2 = foreground.
    """
    if hasattr(label, "detach"):
        label = label.detach().cpu().numpy()
    lab = np.asarray(label)
    channel = lab.ndim >= 3 and lab.shape[0] == 1
    gt = (lab[0] if channel else lab) > 0
    if gt.ndim not in (2, 3):
        raise ValueError(f"label must be 2D or 3D (optionally with a leading channel of 1), got shape {lab.shape}.")
    strokes = (n_strokes, n_strokes) if np.isscalar(n_strokes) else tuple(n_strokes)
    budgets = (max_pixels, max_pixels) if max_pixels is None or np.isscalar(max_pixels) else tuple(max_pixels)
    if len(strokes) != 2 or any(int(s) < 0 for s in strokes):
        raise ValueError(f"n_strokes must be a non-negative int or a (background, foreground) pair, got {n_strokes}.")
    if brush_radius < 0 or margin < 0 or stroke_length < 0:
        raise ValueError("brush_radius, margin and stroke_length must be >= 0.")
    rng = np.random.default_rng(seed)
    out = np.zeros(gt.shape, dtype=np.uint8)
    brush = ndi.iterate_structure(ndi.generate_binary_structure(gt.ndim, 1), brush_radius) if brush_radius else None
    for value, region, count, budget in ((1, ~gt, strokes[0], budgets[0]), (2, gt, strokes[1], budgets[1])):
        if count == 0 or not region.any() or (budget is not None and budget <= 0):
            continue
        inner = None
        for erosion in range(margin + brush_radius, -1, -1):  # shrink the erosion for thin regions
            inner = ndi.binary_erosion(region, iterations=erosion, border_value=1) if erosion else region
            if inner.any():
                break
        candidates = np.argwhere(inner)
        drawn = np.zeros(gt.shape, dtype=bool)
        for _ in range(int(count)):
            start = candidates[rng.integers(len(candidates))]
            stroke = np.zeros(gt.shape, dtype=bool)
            stroke[tuple(np.array(_random_walk(inner, start, stroke_length, 1.0, turn, rng)).T)] = True
            if brush is not None:
                stroke = ndi.binary_dilation(stroke, structure=brush) & region
            new = stroke & ~drawn
            if budget is not None:
                left = budget - int(drawn.sum())
                if left <= 0:
                    break
                if new.sum() > left:  # cut the last stroke to the budget (keep its first pixels in raster order)
                    keep = np.flatnonzero(new.ravel())[:left]
                    new = np.zeros(gt.size, dtype=bool)
                    new[keep] = True
                    new = new.reshape(gt.shape)
            drawn |= new
        out[drawn] = value
    return out[None] if channel else out
