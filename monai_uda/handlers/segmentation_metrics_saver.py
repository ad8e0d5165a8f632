"""Ignite handler computing per-case segmentation metrics during evaluation and saving them as CSV."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai.utils import IgniteInfo, evenly_divisible_all_gather, min_version, optional_import, string_list_all_gather

from monai_uda.evaluation.metrics import METRIC_NAMES, case_metrics, summarize, write_case_metrics

idist, _ = optional_import("ignite", IgniteInfo.OPT_IMPORT_VERSION, min_version, "distributed")
Events, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Events")
if TYPE_CHECKING:
    from ignite.engine import Engine
else:
    Engine, _ = optional_import("ignite.engine", IgniteInfo.OPT_IMPORT_VERSION, min_version, "Engine")

__all__ = ["SegmentationMetricsSaver"]


class SegmentationMetricsSaver:
    """Compute :func:`~monai_uda.evaluation.metrics.case_metrics` for every case an evaluator sees,
    write ``metrics_per_case.csv`` / ``metrics_summary.csv`` and publish the means.

    Meant for a MONAI ``SupervisedEvaluator`` (``decollate=True``, the default), whose
    ``engine.state.output`` after postprocessing is a list of dicts, one per case, holding
    ``pred`` and ``label`` MetaTensors. ``pred`` (and ``label``) may be a channel-first label map
    ``(1, *spatial)`` or a one-hot/probability map ``(C, *spatial)`` with ``C > 1``, in which case its
    argmax over channels is used. A single-channel ``pred`` must already be discrete
    (e.g. ``AsDiscreted(threshold=0.5)``).

    Events:
        - ``EPOCH_STARTED``: reset the buffers.
        - ``ITERATION_COMPLETED``: compute the metrics of every case of the batch.
        - ``EPOCH_COMPLETED``: gather the cases across ranks, write the CSVs on rank 0 (atomically),
          and set ``engine.state.metrics[prefix + name]`` to the mean over cases (finite values, as in
          :func:`~monai_uda.evaluation.metrics.summarize`) of each of ``dice``, ``iou``, ``f1``,
          ``surface_dice``, ``hd95`` (plus the per-class keys for multi-class tasks) on every rank.

    Spacing of a case, in order: ``entry[spacing_key]`` when ``spacing_key`` is given (missing key is an
    error), else ``entry["spacing"]`` when present, else the ``pixdim`` of the ``label`` (then ``pred``)
    MetaTensor (derived from its affine, so it is the spacing *after* any resampling), else 1.0.
    The case name is ``entry[name_key].meta["filename_or_obj"]`` (then the same for ``label``), else
    ``case_<index>``.

    Args:
        output_dir: folder for the CSV files.
        spacing_key: key of an explicit per-case spacing in each output dict.
        tolerance: surface-Dice tolerance in physical units.
        num_classes: number of classes, background included.
        pred_key: key of the prediction in each output dict.
        label_key: key of the reference label in each output dict.
        name_key: key of the MetaTensor whose ``filename_or_obj`` names the case.
        prefix: prepended to the CSV file names and to the ``engine.state.metrics`` keys.
        include_background: also evaluate class 0.
        ignore_empty: see :func:`~monai_uda.evaluation.metrics.case_metrics`.
        save_rank: the rank that writes the files.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        spacing_key: str | None = None,
        tolerance: float = 1.0,
        num_classes: int = 2,
        pred_key: str = "pred",
        label_key: str = "label",
        name_key: str = "image",
        prefix: str = "",
        include_background: bool = False,
        ignore_empty: bool = True,
        save_rank: int = 0,
    ) -> None:
        self.output_dir = os.fspath(output_dir)
        self.spacing_key = spacing_key
        self.tolerance = tolerance
        self.num_classes = num_classes
        self.pred_key = pred_key
        self.label_key = label_key
        self.name_key = name_key
        self.prefix = prefix
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self.save_rank = save_rank
        self._names: list[str] = []
        self._rows: list[dict[str, float]] = []
        self.per_case_path: str | None = None
        self.summary_path: str | None = None

    def attach(self, engine: Engine) -> None:
        """
        Args:
            engine: Ignite Engine, typically a MONAI ``SupervisedEvaluator``.
        """
        engine.add_event_handler(Events.EPOCH_STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _started(self, _engine: Engine) -> None:
        self._names = []
        self._rows = []

    @staticmethod
    def _to_label_map(x: Any, key: str) -> Any:
        if not isinstance(x, (torch.Tensor, np.ndarray)):
            raise TypeError(f"engine output key '{key}' must be a tensor or array, got {type(x).__name__}.")
        if x.ndim >= 3 and x.shape[0] > 1:  # one-hot / probabilities, channel-first
            return x.argmax(0, keepdims=True) if isinstance(x, np.ndarray) else x.argmax(0, keepdim=True)
        return x

    def _spacing(self, entry: Mapping, spatial_dims: int) -> Any:
        if self.spacing_key is not None:
            if self.spacing_key not in entry:
                raise KeyError(f"spacing_key '{self.spacing_key}' not found in engine output keys {sorted(entry)}.")
            return entry[self.spacing_key]
        if "spacing" in entry:
            return entry["spacing"]
        for key in (self.label_key, self.pred_key):
            pixdim = getattr(entry.get(key), "pixdim", None)
            if pixdim is not None:
                pixdim = np.atleast_1d(np.asarray(pixdim.cpu() if isinstance(pixdim, torch.Tensor) else pixdim))
                if pixdim.size >= spatial_dims:
                    return pixdim[:spatial_dims].astype(np.float64)
        return None

    def _name(self, entry: Mapping) -> str:
        for key in (self.name_key, self.label_key):
            meta = getattr(entry.get(key), "meta", None)
            if isinstance(meta, Mapping) and meta.get("filename_or_obj") not in (None, ""):
                return str(meta["filename_or_obj"])
        return f"case_{len(self._rows)}"

    def _iteration(self, engine: Engine) -> None:
        output = engine.state.output
        if isinstance(output, Mapping):
            raise ValueError(
                "SegmentationMetricsSaver needs a decollated engine output (a list of dicts); "
                "use decollate=True on the evaluator."
            )
        for entry in output:
            for key in (self.pred_key, self.label_key):
                if key not in entry:
                    raise KeyError(f"key '{key}' not found in engine output keys {sorted(entry)}.")
            pred = self._to_label_map(entry[self.pred_key], self.pred_key)
            label = self._to_label_map(entry[self.label_key], self.label_key)
            spatial_dims = pred.ndim - 1
            name = self._name(entry)
            try:
                row = case_metrics(
                    pred,
                    label,
                    spacing=self._spacing(entry, spatial_dims),
                    tolerance=self.tolerance,
                    num_classes=self.num_classes,
                    include_background=self.include_background,
                    ignore_empty=self.ignore_empty,
                )
            except ValueError as e:
                raise ValueError(f"case '{name}': {e}") from e
            self._names.append(name)
            self._rows.append(row)

    def __call__(self, engine: Engine) -> None:
        """Gather, write the CSVs (on ``save_rank``) and set ``engine.state.metrics``."""
        import pandas as pd

        ws = idist.get_world_size()
        if self.save_rank >= ws:
            raise ValueError(f"save_rank ({self.save_rank}) must be smaller than the world size ({ws}).")
        classes = range(0 if self.include_background else 1, self.num_classes)
        keys = list(METRIC_NAMES)
        if len(classes) > 1:
            keys += [f"{k}_{c}" for k in METRIC_NAMES for c in classes]
        names = self._names
        values = torch.tensor([[r.get(k, math.nan) for k in keys] for r in self._rows], dtype=torch.float64)
        values = values.reshape(len(self._rows), len(keys))
        if ws > 1:
            names = string_list_all_gather(self._names)
            values = evenly_divisible_all_gather(values, concat=True)
        df = pd.DataFrame(values.numpy(), columns=keys)
        df.insert(0, "name", names)
        summary = summarize(df)
        for k in keys:
            engine.state.metrics[f"{self.prefix}{k}"] = float(summary.loc[k, "mean"])
        if idist.get_rank() == self.save_rank:
            self.per_case_path, self.summary_path = write_case_metrics(df, self.output_dir, prefix=self.prefix)
