"""Per-case segmentation metrics, their summary, and the CSV reports.

Every number comes from MONAI's metric functions on one-hot tensors
(``monai.networks.utils.one_hot``):

- ``dice``: :func:`monai.metrics.compute_dice`;
- ``iou``: :func:`monai.metrics.compute_iou`;
- ``f1``: pixel-wise F1 of each class from the confusion matrix
  (:func:`monai.metrics.get_confusion_matrix` + :func:`monai.metrics.compute_confusion_matrix_metric`);
  for a binary task it equals the Dice of the foreground, as it must;
- ``surface_dice``: normalised surface Dice at ``tolerance`` **in physical units** (e.g. mm),
  :func:`monai.metrics.compute_surface_dice` with ``spacing``;
- ``hd95``: 95th-percentile symmetric Hausdorff distance in physical units,
  :func:`monai.metrics.compute_hausdorff_distance` with ``percentile=95`` and ``spacing``.

Empty structures (per class, per case). MONAI's ``ignore_empty`` semantics are used and extended to
every metric so that they stay consistent with each other:

=====================  =========================  ==============================  ======
label / prediction     ``ignore_empty=True``      ``ignore_empty=False``          hd95
=====================  =========================  ==============================  ======
label empty, pred any  all metrics NaN (case is   see the two rows below          see
                       excluded from the means)                                   left
both empty             (NaN)                      dice = iou = f1 = NSD = 1       0.0
label empty, pred not  (NaN)                      dice = iou = f1 = NSD = 0       inf
label not, pred empty  dice = iou = f1 = NSD = 0  dice = iou = f1 = NSD = 0       inf
=====================  =========================  ==============================  ======

``ignore_empty=True`` is MONAI's default for ``DiceMetric``, so ``dice`` here matches a MONAI
``MeanDice`` handler with default arguments. HD95 with exactly one empty side is ``inf`` (the
distance to a missing structure is unbounded; MONAI itself returns NaN there, which would silently
drop the worst failures from the means). :func:`summarize` therefore reports statistics over the
*finite* values and counts the NaN and inf values separately (``n_nan``, ``n_inf``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    compute_surface_dice,
    get_confusion_matrix,
)
from monai.networks.utils import one_hot

__all__ = [
    "METRIC_NAMES",
    "PER_CASE_FILENAME",
    "SUMMARY_FILENAME",
    "case_metrics",
    "summarize",
    "write_case_metrics",
]

#: the metric keys :func:`case_metrics` always returns (the class means for multi-class tasks)
METRIC_NAMES = ("dice", "iou", "f1", "surface_dice", "hd95")
#: file names written by :func:`write_case_metrics` (after ``prefix``)
PER_CASE_FILENAME = "metrics_per_case.csv"
SUMMARY_FILENAME = "metrics_summary.csv"

_SIMILARITY = ("dice", "iou", "f1", "surface_dice")


def _as_label_map(x: Any, name: str, spatial_dims: int | None) -> torch.Tensor:
    """Return ``x`` as a float tensor of shape (1, 1, *spatial) after validating its values."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.as_tensor() if hasattr(x, "as_tensor") else x  # drop MetaTensor metadata
        t = t.detach().cpu()
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}.")
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    if t.is_floating_point() or t.is_complex():
        if t.is_complex():
            raise ValueError(f"{name} must be a real-valued label map, got dtype {t.dtype}.")
        if torch.isnan(t).any():
            raise ValueError(f"{name} contains NaN values; a label map must hold class indices.")
        if torch.isinf(t).any():
            raise ValueError(f"{name} contains infinite values; a label map must hold class indices.")
        if not torch.equal(t, torch.round(t)):
            raise ValueError(
                f"{name} has non-integer values; pass a label map (e.g. after AsDiscrete(argmax=True)), "
                "not probabilities or logits."
            )
    # accepted layouts: (*spatial) or (1, *spatial); spatial is 2D or 3D
    if t.ndim == 4 or (t.ndim == 3 and spatial_dims != 3 and t.shape[0] == 1):
        if t.shape[0] != 1:
            raise ValueError(
                f"{name} must have a single channel (a label map), got shape {tuple(t.shape)}; "
                "take the argmax of one-hot/probability maps first."
            )
        t = t[0]
    if t.ndim not in (2, 3):
        raise ValueError(f"{name} must be 2D or 3D, shape (*spatial) or (1, *spatial); got shape {tuple(t.shape)}.")
    return t.to(torch.float32)[None, None]


def _spacing_tuple(spacing: Any, spatial_dims: int) -> tuple[float, ...]:
    """Validate ``spacing`` (None, a number, or one positive value per spatial axis)."""
    if spacing is None:
        return (1.0,) * spatial_dims
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    arr = np.atleast_1d(np.asarray(spacing, dtype=np.float64)).ravel()
    if arr.size == 1:
        arr = np.repeat(arr, spatial_dims)
    if arr.size != spatial_dims:
        raise ValueError(f"spacing must have one value per spatial axis ({spatial_dims}), got {spacing!r}.")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"spacing must be finite and positive, got {spacing!r}.")
    return tuple(float(v) for v in arr)


def case_metrics(
    pred: torch.Tensor | np.ndarray,
    label: torch.Tensor | np.ndarray,
    spacing: float | Sequence[float] | np.ndarray | torch.Tensor | None = None,
    tolerance: float = 1.0,
    num_classes: int = 2,
    include_background: bool = False,
    ignore_empty: bool = True,
) -> dict[str, float]:
    """Dice, IoU, F1, surface Dice and HD95 of ONE case.

    Args:
        pred: predicted label map (class indices), shape ``(*spatial)`` or ``(1, *spatial)``, 2D or 3D,
            torch tensor (MetaTensor included) or numpy array. Integer-valued floats are accepted.
        label: reference label map, same layout and spatial shape as ``pred``.
        spacing: physical size of a pixel/voxel along each spatial axis (one number for isotropic);
            ``None`` means 1.0. Used by ``surface_dice`` and ``hd95``.
        tolerance: surface-Dice tolerance, in the same physical units as ``spacing``.
        num_classes: number of classes, background included (2 for a binary task).
        include_background: also evaluate class 0.
        ignore_empty: MONAI's ``ignore_empty``: a class absent from ``label`` gives NaN for every
            metric (see the module docstring for the full table of empty cases).

    Returns:
        ``{"dice", "iou", "f1", "surface_dice", "hd95"}`` as floats. With more than one evaluated
        class (``num_classes > 2``, or ``include_background=True``) also ``"<metric>_<c>"`` per class
        ``c``, and the plain keys hold the NaN-ignoring mean over classes (NaN when every class is NaN).

    Raises:
        ValueError: NaN/inf/non-integer values, values outside ``[0, num_classes)``, mismatched shapes,
            bad ``spacing``/``tolerance``/``num_classes``; the message names the argument.

    Note:
        A 3D array whose first axis has size 1 is read as ``(1, H, W)`` (channel + 2D) unless
        ``spacing`` has three values.
    """
    if not isinstance(num_classes, (int, np.integer)) or isinstance(num_classes, bool) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if not isinstance(tolerance, (int, float, np.floating, np.integer)) or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number, got {tolerance!r}.")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}.")
    hint = None
    if spacing is not None and np.atleast_1d(np.asarray(spacing)).size == 3:
        hint = 3
    p = _as_label_map(pred, "pred", hint)
    y = _as_label_map(label, "label", hint)
    if p.shape != y.shape:
        raise ValueError(f"pred and label must have the same spatial shape, got {tuple(p.shape[2:])} (pred) "
                         f"and {tuple(y.shape[2:])} (label).")
    for name, t in (("pred", p), ("label", y)):
        lo, hi = t.min().item(), t.max().item()
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} has values in [{lo:g}, {hi:g}], outside the classes [0, {num_classes - 1}].")
    spatial_dims = p.ndim - 2
    sp = _spacing_tuple(spacing, spatial_dims)

    p1, y1 = one_hot(p, num_classes), one_hot(y, num_classes)
    kw = {"include_background": include_background}
    with warnings.catch_warnings():
        # MONAI warns about empty masks; the empty cases are handled explicitly below
        warnings.filterwarnings("ignore", message=r".*(ground truth|prediction) of class \d+ is all 0.*")
        # MONAI 1.5+ calls its own deprecated argument internally; not actionable here
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        per = {
            "dice": compute_dice(p1, y1, ignore_empty=ignore_empty, **kw),
            "iou": compute_iou(p1, y1, ignore_empty=ignore_empty, **kw),
            "f1": compute_confusion_matrix_metric("f1 score", get_confusion_matrix(p1, y1, **kw)),
            "surface_dice": compute_surface_dice(
                p1, y1, [float(tolerance)] * (num_classes - (0 if include_background else 1)), spacing=sp, **kw
            ),
            "hd95": compute_hausdorff_distance(p1, y1, percentile=95, spacing=sp, **kw),
        }
    per = {k: v.reshape(-1).double().numpy().copy() for k, v in per.items()}

    # explicit empty-structure rules (module docstring), applied per evaluated class
    classes = list(range(0 if include_background else 1, num_classes))
    sdims = tuple(range(1, spatial_dims + 1))
    label_empty = (y1[0, classes].sum(dim=sdims) == 0).numpy()
    pred_empty = (p1[0, classes].sum(dim=sdims) == 0).numpy()
    for i in range(len(classes)):
        if label_empty[i] and ignore_empty:
            for k in per:
                per[k][i] = np.nan
        elif label_empty[i] and pred_empty[i]:
            for k in _SIMILARITY:
                per[k][i] = 1.0
            per["hd95"][i] = 0.0
        elif label_empty[i] or pred_empty[i]:
            for k in _SIMILARITY:
                per[k][i] = 0.0
            per["hd95"][i] = np.inf

    out: dict[str, float] = {}
    for k in METRIC_NAMES:
        vals = per[k]
        out[k] = float(np.nanmean(vals)) if not np.all(np.isnan(vals)) else float("nan")
    if len(classes) > 1:
        for k in METRIC_NAMES:
            for i, c in enumerate(classes):
                out[f"{k}_{c}"] = float(per[k][i])
    return out


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per-metric statistics of a per-case table.

    Args:
        df: one row per case; every numeric column is a metric (non-numeric columns such as the case
            name are ignored).

    Returns:
        A DataFrame indexed by metric name (index name ``"metric"``) with columns ``mean``, ``std``
        (population std, ``ddof=0``, as ``numpy.nanstd``), ``median`` computed over the *finite*
        values, and ``n_valid`` (finite values), ``n_nan``, ``n_inf`` counts. A metric without
        finite values gets NaN statistics.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}.")
    num = df.select_dtypes(include=[np.number])
    rows = {}
    for col in num.columns:
        v = num[col].to_numpy(dtype=np.float64)
        fin = v[np.isfinite(v)]
        rows[col] = {
            "mean": float(fin.mean()) if fin.size else float("nan"),
            "std": float(fin.std(ddof=0)) if fin.size else float("nan"),
            "median": float(np.median(fin)) if fin.size else float("nan"),
            "n_valid": int(fin.size),
            "n_nan": int(np.isnan(v).sum()),
            "n_inf": int(np.isinf(v).sum()),
        }
    out = pd.DataFrame.from_dict(rows, orient="index", columns=["mean", "std", "median", "n_valid", "n_nan", "n_inf"])
    out.index.name = "metric"
    return out


def write_case_metrics(
    rows: Sequence[Mapping[str, Any]] | pd.DataFrame, out_dir: str | os.PathLike, prefix: str = ""
) -> tuple[str, str]:
    """Write the per-case table and its :func:`summarize` summary as CSV, atomically.

    Args:
        rows: one mapping per case (e.g. ``{"name": ..., **case_metrics(...)}``) or a DataFrame.
        out_dir: output folder, created if missing.
        prefix: prepended to the file names.

    Returns:
        ``(per_case_csv_path, summary_csv_path)``: ``<out_dir>/<prefix>metrics_per_case.csv`` (one row
        per case, no index column) and ``<out_dir>/<prefix>metrics_summary.csv`` (one row per metric).
        Each file is written to a temporary file in ``out_dir`` and moved into place with ``os.replace``.
    """
    df = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame([dict(r) for r in rows])
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    per_case = os.path.join(out_dir, f"{prefix}{PER_CASE_FILENAME}")
    summary = os.path.join(out_dir, f"{prefix}{SUMMARY_FILENAME}")
    from monai_uda.utils import atomic_write

    atomic_write(per_case, lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(summary, lambda tmp: summarize(df).to_csv(tmp, index=True))
    return per_case, summary
