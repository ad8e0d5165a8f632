"""Per-layer domain-shift report: the target-normalised W2 (Eq. 5) of every norm layer, as a table, CSV and plot.

``shift_report(model, source_data, target_data, out_dir)`` runs ``model`` on source and on target
images, fits a Gaussian to the features entering every BatchNorm layer and writes

- ``shift.csv``: one row per layer (see :func:`monai_uda.methods.bn_reestimation.wasserstein.layerwise_distances`);
- ``shift.png``: the per-layer normalised distance (per channel, log scale) in forward order.

With ``reference=`` a second model (supervised on the target), it instead reports the paper's measure
between ``model`` (e.g. BN-adapted) and the reference on the target images, and ``source_data`` is
not used. Labels are never read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pandas as pd

from monai_uda.utils import atomic_write
import torch
from torch import nn

from monai_uda.methods.bn_reestimation.wasserstein import adaptation_distance, domain_shift_distance

__all__ = ["shift_report", "format_table", "plot_shift"]

COLUMNS = [
    "index",
    "layer",
    "channels",
    "w2",
    "w2_normalized",
    "w2_normalized_per_channel",
    "mean_term",
    "n_target",
    "n_estimate",
]


def plot_shift(df: pd.DataFrame, path: str, title: str = "target-normalised W2 per layer") -> None:
    """Write a PNG bar plot of ``w2_normalized_per_channel`` per layer (forward order), atomically."""
    # a pyplot-free Figure: no backend switch (Jupyter keeps its inline figures), no global figure list
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(6.0, 0.35 * len(df) + 2), 4.0))
    ax = fig.subplots()
    vals = df["w2_normalized_per_channel"].clip(lower=1e-12)
    ax.bar(range(len(df)), vals, color="tab:blue")
    ax.set_yscale("log")
    ax.set_xticks(range(len(df)))
    ax.set_xticklabels([str(n).replace(".adn.N", "") for n in df["layer"]], rotation=90, fontsize=7)
    ax.set_ylabel(r"$\widetilde{W}_2^2$ / channels (Eq. 5)")
    ax.set_xlabel("norm layer (forward order)")
    ax.set_title(f"{title}; mean over layers = {df['w2_normalized_per_channel'].mean():.3g}")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))


def shift_report(
    model: nn.Module,
    source_data: Iterable | None,
    target_data: Iterable,
    out_dir: str,
    *,
    reference: nn.Module | None = None,
    statistics: str = "features",
    layers: Sequence[str] | None = None,
    covariance: str = "full",
    where: str = "input",
    image_key: str = "image",
    device: str | torch.device | None = None,
    max_batches: int | None = None,
    plot: bool = True,
) -> pd.DataFrame:
    """Compute the per-layer table, write ``out_dir/shift.csv`` and ``out_dir/shift.png``, return the table.

    Args:
        model: the network (a ``UDAUNet`` or any network with BatchNorm layers, or pass ``layers``).
        source_data: source image batches (ignored when ``reference`` is given).
        target_data: target image batches (tensors, dicts with ``image_key``, or tuples).
        out_dir: output folder (created).
        reference: optional target-supervised model; then the table is the paper's adapted-vs-reference
            measure on the target data instead of the source-vs-target shift of ``model``.
        statistics: with ``reference``: ``"features"`` (Gaussians fitted to the features on
            ``target_data``) or ``"running"`` (the norm layers' stored statistics, diagonal).
        layers: sub-module names; default every norm layer with running statistics.
        covariance: ``"full"`` (multivariate) or ``"diagonal"``.
        where: features entering (``"input"``) or leaving (``"output"``) the layers.
        image_key: key of the image in dict batches.
        device: defaults to the model's device.
        max_batches: cap on the batches read from each data iterable.
        plot: write ``shift.png``.

    Returns:
        ``pandas.DataFrame`` with columns ``index, layer, channels, w2, w2_normalized,
        w2_normalized_per_channel, mean_term, n_target, n_estimate``; ``df.attrs["aggregate"]`` holds the
        mean over layers of ``w2_normalized_per_channel`` and ``df.attrs["kind"]`` the comparison made.
    """
    kw = dict(layers=layers, covariance=covariance, where=where, image_key=image_key, device=device, max_batches=max_batches)
    if reference is not None:
        rows = adaptation_distance(model, reference, target_data, statistics=statistics, **kw)
        kind = "model (estimate) vs reference (truth) on target"
    else:
        if source_data is None:
            raise ValueError("source_data is required unless a reference model is given.")
        rows = domain_shift_distance(model, source_data, target_data, **kw)
        kind = "source (estimate) vs target (truth), normalised by target"
    df = pd.DataFrame(rows)[COLUMNS]
    df.attrs["aggregate"] = float(df["w2_normalized_per_channel"].mean())
    df.attrs["kind"] = kind
    os.makedirs(out_dir, exist_ok=True)
    atomic_write(os.path.join(out_dir, "shift.csv"), lambda tmp: df.to_csv(tmp, index=False))
    if plot:
        plot_shift(df, os.path.join(out_dir, "shift.png"), title=kind)
    return df


def format_table(df: pd.DataFrame) -> str:
    """A printable per-layer table with a final line for the aggregate (mean over layers)."""
    cols = ["index", "layer", "channels", "w2", "w2_normalized", "w2_normalized_per_channel"]
    show = df[cols].copy()
    show["layer"] = show["layer"].astype(str).str.replace(".adn.N", "", regex=False)
    text = show.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    agg = df.attrs.get("aggregate", float(df["w2_normalized_per_channel"].mean()))
    kind = df.attrs.get("kind", "")
    return f"{text}\nmean over {len(df)} layers of w2_normalized_per_channel: {agg:.4g}" + (f"  ({kind})" if kind else "")
