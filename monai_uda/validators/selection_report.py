"""What a selection leaves on disk: ``selection.csv``, ``selection.png`` and, optionally, a bundle to serve.

- :func:`selection_table`: the scores of :func:`~monai_uda.validators.score.score_candidates` plus each candidate's
  ``rule_score`` (its mean rank over the rule's columns; higher = better), ``chosen`` and ``checkpoint``.
- :func:`plot_selection`: one row per candidate, one column per validator (and the rule); each cell coloured by
  the candidate's rank on that column (dark = best) and labelled with its score; the chosen row marked.
- :func:`write_selection_bundle`: the chosen weights as ``DIR/models/model.pt`` in a MONAI bundle folder whose
  ``configs/`` are copied from a template bundle (the source bundle for ``UDAUNet`` checkpoints), with the
  selection and every validator score recorded in ``DIR/configs/metadata.json`` under ``"uda_selection"``.

Every file is written atomically (:mod:`monai_uda.utils`).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
from typing import Any, Mapping, Sequence

import pandas as pd
import torch

from monai_uda.utils import atomic_json, atomic_torch_save, atomic_write, atomic_write_text

from .score import TIMING_COLUMNS
from .selection import _columns, rule_scores

__all__ = ["SELECTION_KEY", "selection_table", "write_selection_csv", "plot_selection", "selection_record",
           "write_selection_bundle"]

#: the key of ``metadata.json`` that records a selection
SELECTION_KEY = "uda_selection"


def selection_table(df: pd.DataFrame, choice: str, rule: str | Sequence[str] = "default",
                    checkpoints: Mapping[str, str] | None = None) -> pd.DataFrame:
    """``df`` with ``rule_score``, ``chosen`` and ``checkpoint`` columns (candidates as the index)."""
    table = df.copy()
    table["rule_score"] = rule_scores(df, rule)
    table["chosen"] = table.index == choice
    if checkpoints is not None:
        table["checkpoint"] = [checkpoints.get(name, "") for name in table.index]
    return table


def write_selection_csv(table: pd.DataFrame, path: str | os.PathLike) -> str:
    """The table as CSV (the candidate names as the first column ``candidate``)."""
    return atomic_write_text(path, table.to_csv(index_label="candidate"))


def plot_selection(table: pd.DataFrame, path: str | os.PathLike, rule: str | Sequence[str] = "default",
                   title: str = "") -> str:
    """A rank map of the candidates (rows) over the validators and the rule (columns); written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rule_columns = _columns(table, rule)
    columns = [c for c in table.columns if c not in (*TIMING_COLUMNS, "rule_score", "chosen", "checkpoint")]
    columns = [c for c in columns if pd.api.types.is_numeric_dtype(table[c])] + ["rule_score"]
    ranks = table[columns].rank(ascending=True, method="average", na_option="top")
    n = len(table)
    shade = (ranks.to_numpy(dtype=float) - 1) / max(n - 1, 1)  # 0 = worst, 1 = best
    fig, ax = plt.subplots(figsize=(1.2 + 1.15 * len(columns), 0.9 + 0.45 * n))
    ax.imshow(shade, cmap="Blues", vmin=-0.15, vmax=1.15, aspect="auto")
    for i in range(n):
        for j, c in enumerate(columns):
            v = table[c].iloc[i]
            text = "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if shade[i, j] > 0.6 else "black")
    labels = [f"{c}*" if c in rule_columns else c for c in columns[:-1]] + ["rule (mean rank)"]
    ax.set_xticks(range(len(columns)), labels, rotation=35, ha="right", fontsize=8)
    chosen = table["chosen"].to_numpy() if "chosen" in table else np.zeros(n, bool)
    ax.set_yticks(range(n), [f"> {name}" if c else str(name) for name, c in zip(table.index, chosen)], fontsize=8)
    for i in np.flatnonzero(chosen):
        ax.add_patch(plt.Rectangle((-0.5, i - 0.5), len(columns), 1, fill=False, lw=2, ec="tab:red"))
    ax.set_title(title or "validator scores (cell colour: rank, dark = predicted better; * = in the rule)", fontsize=9)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    finally:
        plt.close(fig)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if hasattr(value, "item"):
        return _plain(value.item())
    return value


def selection_record(table: pd.DataFrame, choice: str, reason: str, rule: str | Sequence[str],
                     **facts: Any) -> dict[str, Any]:
    """The selection as a JSON-ready dict: choice, reason, rule, when, the facts given, and every score."""
    rule_columns = _columns(table, rule)
    scores = {str(name): {str(c): _plain(row[c]) for c in table.columns if c != "checkpoint"}
              for name, row in table.iterrows()}
    return {"chosen": choice, "reason": reason, "rule": rule if isinstance(rule, str) else list(rule),
            "rule_columns": rule_columns, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            **{k: _plain(v) for k, v in facts.items()}, "scores": scores}


def _set_literal(config: dict, key: str, value: Any) -> None:
    """Replace a top-level literal (not an ``@``/``$`` expression) of a bundle config."""
    if key in config and not (isinstance(config[key], str) and config[key][:1] in "@$%"):
        config[key] = value


def write_selection_bundle(out_dir: str | os.PathLike, template: str | os.PathLike, state_dict: Mapping[str, Any],
                           record: Mapping[str, Any], spatial_dims: int | None = None, in_channels: int | None = None,
                           num_classes: int | None = None) -> str:
    """A MONAI bundle folder with the chosen weights, servable by MONAI Label; returns ``out_dir``.

    Args:
        out_dir: the bundle folder to write (created; files of an earlier selection are replaced).
        template: the bundle whose ``configs/`` (and ``docs/``, ``LICENSE``) are copied, e.g.
            ``bundles/source_segmentation``.
        state_dict: the chosen network's weights, written as ``models/model.pt`` (a plain state dict).
        record: :func:`selection_record`, stored in ``configs/metadata.json`` under :data:`SELECTION_KEY`.
        spatial_dims, in_channels, num_classes: the network's; written into the copied configs' literal keys of
            those names and into ``metadata.json``'s ``network_data_format``, so that the configs build this network.

    Each config's literal ``bundle_root`` is set to ``out_dir``'s absolute path (the template's expression would point
    at the template); MONAI Label sets ``bundle_root`` itself.
    """
    out_dir, template = os.fspath(out_dir), os.fspath(template)
    configs = os.path.join(template, "configs")
    if not os.path.isdir(configs):
        raise FileNotFoundError(f"bundle template has no configs folder: {configs}")
    if os.path.isfile(out_dir):
        raise FileExistsError(f"--write-bundle {out_dir} is a file, not a folder")
    root = os.path.abspath(out_dir)
    for name in sorted(os.listdir(configs)):
        src = os.path.join(configs, name)
        if not os.path.isfile(src):
            continue
        dst = os.path.join(out_dir, "configs", name)
        if not name.endswith(".json"):
            atomic_write(dst, lambda tmp, src=src: shutil.copyfile(src, tmp))
            continue
        with open(src) as f:
            config = json.load(f)
        if isinstance(config, dict):
            if name == "metadata.json":
                _update_metadata(config, record, spatial_dims, in_channels, num_classes)
            else:
                if "bundle_root" in config:
                    config["bundle_root"] = root
                for key, value in (("spatial_dims", spatial_dims), ("in_channels", in_channels),
                                   ("num_classes", num_classes)):
                    if value is not None:
                        _set_literal(config, key, int(value))
        atomic_json(config, dst, indent=4)
    if not os.path.isfile(os.path.join(configs, "metadata.json")):
        meta: dict[str, Any] = {}
        _update_metadata(meta, record, spatial_dims, in_channels, num_classes)
        atomic_json(meta, os.path.join(out_dir, "configs", "metadata.json"), indent=4)
    for extra in ("LICENSE", os.path.join("docs", "README.md")):
        src = os.path.join(template, extra)
        if os.path.isfile(src):
            atomic_write(os.path.join(out_dir, extra), lambda tmp, src=src: shutil.copyfile(src, tmp))
    state = {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}
    atomic_torch_save(state, os.path.join(out_dir, "models", "model.pt"))
    return out_dir


def _update_metadata(meta: dict, record: Mapping[str, Any], spatial_dims: int | None, in_channels: int | None,
                     num_classes: int | None) -> None:
    meta[SELECTION_KEY] = json.loads(json.dumps(dict(record), default=str))
    fmt = meta.get("network_data_format")
    if not isinstance(fmt, dict):
        return
    for group, channels in (("inputs", in_channels), ("outputs", num_classes)):
        for spec in (fmt.get(group) or {}).values():
            if not isinstance(spec, dict):
                continue
            if channels is not None and "num_channels" in spec:
                spec["num_channels"] = int(channels)
            shape = spec.get("spatial_shape")
            if spatial_dims is not None and isinstance(shape, list) and shape and len(shape) != spatial_dims:
                spec["spatial_shape"] = [shape[0]] * int(spatial_dims)
    outputs = fmt.get("outputs") or {}
    if num_classes is not None and isinstance(outputs.get("pred"), dict) and "channel_def" in outputs["pred"]:
        labels = record.get("labels")
        if isinstance(labels, Mapping) and len(labels) == num_classes:
            outputs["pred"]["channel_def"] = {str(k): str(v) for k, v in labels.items()}
