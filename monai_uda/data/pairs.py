"""The real domain pairs of ``../shared/data`` (A1, B2, C1, D1) as UDA datalists.

The pairings are those suggested by the data's own README/manifest:

====  ======================================  ======================================  =========
pair  source (labelled)                       target (unlabelled for adaptation)      task
====  ======================================  ======================================  =========
A1    EPFL hippocampus FIB-SEM (27 + 5 val)   Drosophila VNC ssTEM (10 adapt, 10 test) mito
B2    ISBI 2012 ssTEM (25 + 5 val)            Drosophila VNC ssTEM (10 adapt, 10 test) membrane
C1    DSB2018 fluorescence (40 + 8 val)       DSB2018 H&E brightfield (16 adapt, 16 test) nuclei
D1    BRATS T1c pat0005/6 (+ pat0003 val)     BRATS FLAIR pat0001/2/4 (transductive)   tumour
====  ======================================  ======================================  =========

A1-C1 are *inductive*: the unlabelled target images used for adaptation are disjoint from the
target test images; the oracle trains on the labels of the adaptation images. D1 has only three
target subjects, so it is *transductive* (adapt on the test volumes' images, as the papers' one-shot
and CrossMoDA settings do) and the oracle trains on FLAIR of the three other (source) subjects.
The oracle selects its checkpoint on ``oracle_validation``: the last fifth of its labelled target images
(2D: 2 of 10, 3 of 16) or, for D1, pat0003 (the source-validation subject). Target labels only ever
appear in ``target_test``, ``oracle_training`` and ``oracle_validation``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from .datalist import DatalistError, validate_uda_datalist, write_uda_datalist

__all__ = ["PAIRS", "build_pair_datalist", "default_data_root"]

def _load_pairs() -> dict[str, dict[str, Any]]:
    """Pair definitions from ``data_manifests/shared/pairs.json`` (the single source of truth)."""
    import json

    from .external import manifests_dir

    path = manifests_dir() / "shared" / "pairs.json"
    if not path.is_file():
        raise DatalistError(f"pair manifest not found: {path}")
    with open(path) as f:
        return json.load(f)["pairs"]


PAIRS: dict[str, dict[str, Any]] = _load_pairs()


def default_data_root() -> str:
    """``$MONAI_UDA_DATA`` if set, else ``../shared/data`` relative to the working directory."""
    return os.environ.get("MONAI_UDA_DATA", os.path.join("..", "shared", "data"))


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatalistError(f"{what}: folder not found: {path}")
    return path


def _png_items(root: Path, names: list[str], label: str | None, spacing: list[float]) -> list[dict[str, Any]]:
    items = []
    for n in names:
        it: dict[str, Any] = {"image": str(root / "images" / f"{n}.png"), "spacing": spacing}
        if label:
            it["label"] = str(root / "labels" / label / f"{n}.png")
        items.append(it)
    return items


def _names(root: Path) -> list[str]:
    return sorted(p.stem for p in _require_dir(root / "images", root.name).glob("*.png"))


def _build_2d(pair: str, spec: dict[str, Any], data_root: Path) -> dict[str, Any]:
    src = _require_dir(data_root / spec["source"], f"pair {pair} source")
    tgt = _require_dir(data_root / spec["target"], f"pair {pair} target")
    lab = spec["label"]
    s_names = _names(src)
    if spec["source"] == "em_epfl_hippocampus_fibsem":
        with open(src / "index.csv") as f:
            split = {r["name"]: r["original_split"] for r in csv.DictReader(f)}
        s_train = [n for n in s_names if split.get(n) == "train"]
        s_val = [n for n in s_names if split.get(n) == "test"]
    else:
        n_val = max(1, len(s_names) // 6)
        s_train, s_val = s_names[:-n_val], s_names[-n_val:]
    t_names = _names(tgt)
    half = len(t_names) // 2
    t_adapt, t_test = t_names[:half], t_names[half:]
    # the oracle selects its checkpoint on the last fifth of its own labelled images, never on target_test
    n_oval = max(1, len(t_adapt) // 5)
    o_train, o_val = t_adapt[:-n_oval], t_adapt[-n_oval:]
    ss, ts = spec["source_spacing"], spec["target_spacing"]
    return {
        "spatial_dims": 2,
        "in_channels": 1,
        "labels": {"0": "background", "1": lab},
        "setting": "inductive",
        "surface_tolerance": 2.0 * ts[0],
        "spacing_unit": "nm" if spec["source"].startswith("em_") else "pixel",
        "source_training": _png_items(src, s_train, lab, ss),
        "source_validation": _png_items(src, s_val, lab, ss),
        "target_training": _png_items(tgt, t_adapt, None, ts),
        "target_test": _png_items(tgt, t_test, lab, ts),
        "oracle_training": _png_items(tgt, o_train, lab, ts),
        "oracle_validation": _png_items(tgt, o_val, lab, ts),
    }


def _build_d1(data_root: Path) -> dict[str, Any]:
    root = _require_dir(data_root / "mri_brats2013_t1c_flair", "pair D1")

    def items(cases, mod, labelled=True):
        out = []
        for c in cases:
            it = {"image": str(root / f"{c}_{mod}.nii.gz")}
            if labelled:
                it["label"] = str(root / f"{c}_tumor.nii.gz")
            out.append(it)
        return out

    target = ["pat0001", "pat0002", "pat0004"]
    return {
        "spatial_dims": 3,
        "in_channels": 1,
        "labels": {"0": "background", "1": "whole tumour"},
        "label_map": {"1": 1, "2": 1, "3": 1, "4": 1},
        "setting": "transductive",
        "surface_tolerance": 2.0,
        "spacing_unit": "mm",
        "source_training": items(["pat0005", "pat0006"], "t1c"),
        "source_validation": items(["pat0003"], "t1c"),
        "target_training": items(target, "flair", labelled=False),
        "target_test": items(target, "flair"),
        # the same subjects as source training / validation, in the target modality
        "oracle_training": items(["pat0005", "pat0006"], "flair"),
        "oracle_validation": items(["pat0003"], "flair"),
    }


def build_pair_datalist(pair: str, data_root: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                        validate: bool = True) -> dict[str, Any]:
    """Build (and optionally write) the datalist of one real pair.

    Args:
        pair: ``A1``, ``B2``, ``C1`` or ``D1``.
        data_root: the shared data folder (default :func:`default_data_root`).
        out: JSON path to write atomically; nothing is written when validation fails.
        validate: open every file and check it (shapes, label values, ...).
    """
    key = pair.upper()
    if key not in PAIRS:
        raise DatalistError(f"unknown pair {pair!r}; choose one of {sorted(PAIRS)}")
    root = Path(data_root or default_data_root()).resolve()
    _require_dir(root, "data root")
    spec = PAIRS[key]
    dl = _build_d1(root) if key == "D1" else _build_2d(key, spec, root)
    dl = {"name": key, "description": spec["description"], **dl}
    if validate:
        validate_uda_datalist(dl, deep=True)
    if out is not None:
        write_uda_datalist(dl, out)
    return dl
