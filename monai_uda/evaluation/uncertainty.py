"""Does a predicted uncertainty mark the wrong pixels? (evaluation only: it reads the labels)

For a per-pixel uncertainty map ``u`` (a BUDA-Seg variance map, an entropy, an MC-dropout disagreement) and
the prediction and label of the same image, a pixel is an *error* when the prediction differs from the
label. :func:`error_detection` measures how well ``u`` ranks errors above correct pixels: the area under
the ROC curve (``sklearn.metrics.roc_auc_score``; 0.5 = no better than chance, 1 = every error is more
uncertain than every correct pixel) and the error rate in each uncertainty decile (a monotone increase
is what an uncertainty that "offsets the segmentation loss" where the pseudo-label is wrong should show;
Li et al., BUDA-Seg, Sec. 3, Discussion).

Target labels are read here for evaluation; no method or validator may call this.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["error_detection", "softmax_entropy"]


def softmax_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy of ``softmax(logits)`` over the class axis 1: ``(B, C, *sp)`` -> ``(B, *sp)``."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def error_detection(uncertainty: Any, prediction: Any, label: Any, bins: int = 10,
                    max_pixels: int | None = 2_000_000, seed: int = 0) -> dict[str, Any]:
    """How well ``uncertainty`` separates wrong from right pixels.

    Args:
        uncertainty: per-pixel scores, any shape (higher = less sure).
        prediction, label: class indices of the same shape (or broadcastable after squeezing a channel axis).
        bins: quantile bins of the uncertainty for the error-rate curve.
        max_pixels: a uniform random subset of at most this many pixels (memory; ``None``: all).
        seed: of that subset.

    Returns:
        ``auroc`` (NaN when every pixel is right or every pixel is wrong), ``error_rate`` (overall),
        ``bin_error_rate`` (error rate per uncertainty quantile bin, low to high uncertainty),
        ``bin_edges`` and ``pixels``.
    """
    from sklearn.metrics import roc_auc_score

    u = np.asarray(torch.as_tensor(uncertainty).detach().cpu().float()).ravel()
    p = np.asarray(torch.as_tensor(prediction).detach().cpu()).ravel()
    y = np.asarray(torch.as_tensor(label).detach().cpu()).ravel()
    if not (u.size == p.size == y.size):
        raise ValueError(f"uncertainty, prediction and label must have as many pixels: {u.size}, {p.size}, {y.size}")
    keep = np.isfinite(u)
    u, p, y = u[keep], p[keep], y[keep]
    if max_pixels is not None and u.size > max_pixels:
        idx = np.random.default_rng(seed).choice(u.size, size=max_pixels, replace=False)
        u, p, y = u[idx], p[idx], y[idx]
    err = (p != y).astype(np.int8)
    auroc = float(roc_auc_score(err, u)) if 0 < err.sum() < err.size else float("nan")
    edges = np.unique(np.quantile(u, np.linspace(0, 1, bins + 1)))
    which = np.clip(np.searchsorted(edges, u, side="right") - 1, 0, max(len(edges) - 2, 0))
    rates = [float(err[which == b].mean()) for b in range(max(len(edges) - 1, 1)) if np.any(which == b)]
    return {"auroc": auroc, "error_rate": float(err.mean()) if err.size else float("nan"),
            "bin_error_rate": rates, "bin_edges": edges.tolist(), "pixels": int(err.size)}
