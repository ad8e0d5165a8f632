"""Is a method better than a baseline? A paired test on per-image scores.

Each target test image is scored by both models under the same seed, so the comparison is paired:
for every (seed, image) the difference ``method - baseline`` of a per-image metric (Dice by default) is
one observation. :func:`paired_test` runs the two-sided Wilcoxon signed-rank test
(:func:`scipy.stats.wilcoxon`) on those differences; a method is marked better (``+``) or worse (``-``)
than the baseline only when ``p < alpha`` (0.05 by default), otherwise "no significant difference" (``=``).
The direction is the test's own: the sign of the signed-rank statistic (the sum of the ranks of ``|d|``, signed),
which can differ from the sign of the mean difference when a few large differences outweigh many small ones of
the other sign (the mean is still reported).
Pairs with a missing score (NaN, e.g. an empty label) are dropped; fewer than 5 pairs or all-zero
differences give no decision (``?`` / ``=``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ALPHA", "paired_differences", "paired_test", "significance_mark"]

#: significance level of the benchmark tables
ALPHA = 0.05
#: the fewest (seed, image) pairs a decision is made on
MIN_PAIRS = 5


def paired_differences(per_image: pd.DataFrame, method: str, baseline: str = "source",
                       metric: str = "dice") -> np.ndarray:
    """``method - baseline`` of ``metric`` for every (seed, image) both have a finite score for."""
    cols = ["seed", "name", metric]
    a = per_image.loc[per_image.method == method, cols]
    b = per_image.loc[per_image.method == baseline, cols]
    both = a.merge(b, on=["seed", "name"], suffixes=("_m", "_b"))
    d = (both[f"{metric}_m"] - both[f"{metric}_b"]).to_numpy(dtype=float)
    return d[np.isfinite(d)]


def paired_test(per_image: pd.DataFrame, method: str, baseline: str = "source", metric: str = "dice",
                alpha: float = ALPHA) -> dict[str, Any]:
    """Two-sided Wilcoxon signed-rank test of ``method`` against ``baseline`` on paired per-image scores.

    Returns:
        ``n`` (pairs with a finite difference, zero differences included, which the test itself leaves out),
        ``mean_diff``, ``p`` (NaN without a test) and ``mark``: ``"+"`` (better, p < alpha),
        ``"-"`` (worse), ``"="`` (no significant difference) or ``"?"`` (fewer than 5 pairs). Better or worse is
        the sign of the signed-rank statistic (see the module's docstring).
    """
    d = paired_differences(per_image, method, baseline, metric)
    out: dict[str, Any] = {"n": int(d.size), "mean_diff": float(d.mean()) if d.size else math.nan, "p": math.nan}
    if d.size < MIN_PAIRS:
        out["mark"] = "?"
        return out
    if not np.any(d != 0):
        out.update(p=1.0, mark="=")
        return out
    from scipy.stats import rankdata, wilcoxon

    p = float(wilcoxon(d, alternative="two-sided", zero_method="wilcox").pvalue)
    nonzero = d[d != 0]  # zero_method="wilcox": zero differences take no part in the test
    out.update(p=p, mark=significance_mark(float(np.sum(np.sign(nonzero) * rankdata(np.abs(nonzero)))), p, alpha))
    return out


def significance_mark(direction: float, p: float, alpha: float = ALPHA) -> str:
    """``+``/``-`` when ``p < alpha`` (the sign of ``direction``: the signed-rank statistic), else ``=``."""
    if not (p < alpha):
        return "="
    return "+" if direction > 0 else "-"
