"""Rescore the candidates of a selection table whose models were made again (a benchmark row rerun), in place.

``monai-uda select --bench <run> --seed <k>`` scores every model of one seed at once; when some of those rows are
rerun later (for example the shallow-to-deep family with a new Prediction Enhancer rule), the table still holds the
old models' scores, and scoring the seed again needs every candidate model on one machine. The validators that
score a candidate alone (``im``, ``mixval``, ``entropy``, ``foreground_fraction``, ``component_sizes``: no other
candidate, no source model) give the same score for a model whichever table it is in, so this script scores only
the rerun models with them (``w2_shift`` too: it reads the candidate's own BatchNorm features) and replaces their
rows. The validators that need the source model's predictions (``source_agreement``) or the other candidates
(``consensus``) become empty for those rows. The rule score and the pick are recomputed over the whole table with the
table's own rule (the default rule's columns all score a candidate alone, so its pick is what ``select`` would give
on the new models); a table whose rule uses an emptied column is refused.

``selection.json`` records, under ``rescored``, each rescored candidate's checkpoint (path and SHA-256), date and
emptied columns; ``scripts/validator_study.py`` then pairs those rows with the current Dice rather than the superseded
one. A row rerun again after its rescoring must be rescored again. No
target label is read: the target_training images only, as ``select``.

With ``--whole``, on a machine that holds every candidate's current model (the source model too), every candidate is
scored again with every validator of the table, ``source_agreement`` and ``consensus`` included: what ``select``
would give on today's models, with the table's own rule and record kept; each candidate is then recorded as
rescored (nothing emptied), so the study pairs every row with the current Dice.

    OMP_NUM_THREADS=1 python scripts/selection_rescore.py docs/benchmarks/selection/A1/seed0 \\
        --datalist results/v2/A1/A1.json --bench results/v2/A1 --methods s2d s2d_noteacher s2d_norect
    OMP_NUM_THREADS=2 python scripts/selection_rescore.py docs/benchmarks/selection/A1/seed0 \\
        --datalist results/v2/A1/A1.json --bench results/v2/A1 --whole --threads 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
from pathlib import Path
from typing import Mapping

import pandas as pd
import torch

from monai_uda.utils import atomic_write_text, file_hash


def alone(columns: list[str]) -> tuple[list[str], list[str]]:
    """The validator columns that score a candidate alone, and those that need the source model or the others."""
    from monai_uda.cli import load_validator_plugins
    from monai_uda.validators.registry import validator_needs

    load_validator_plugins()  # validators registered by a method package (w2_shift)
    solo, other = [], []
    for c in columns:
        (other if validator_needs(c) & {"source", "others"} else solo).append(c)
    return solo, other


def load_table(table_dir: Path) -> tuple[pd.DataFrame, dict]:
    """``table_dir``'s ``selection.csv`` (candidates as the index) and ``selection.json``; a missing one is refused,
    naming it."""
    csv, rec_file = table_dir / "selection.csv", table_dir / "selection.json"
    for f in (csv, rec_file):
        if not f.is_file():
            raise SystemExit(f"{f} not found: rescoring needs the table and record of a `monai-uda select` run")
    return pd.read_csv(csv, index_col="candidate"), json.loads(rec_file.read_text())


def rescore(table_dir: Path, datalist: str, checkpoints: Mapping[str, str], label_limit: int | None = 16,
            roi_size: list[int] | None = None, progress: bool = True, whole: bool = False) -> pd.DataFrame:
    """Score ``checkpoints`` (candidate name -> UDAUNet state dict) with the table's single-candidate validators,
    replace their rows of ``table_dir/selection.csv``, recompute the rule and the pick, and rewrite the table, its
    plot and ``selection.json`` (atomically). With ``whole``, ``checkpoints`` holds every candidate of the table and
    each is scored with every validator of the table. Returns the new table."""
    from monai_uda.networks import UDAUNet
    from monai_uda.validators import score_candidates, select
    from monai_uda.validators.candidates import (as_uda, default_inferer, load_weights, source_statistics,
                                                 target_images)
    from monai_uda.validators.registry import validator_needs
    from monai_uda.validators.score import TIMING_COLUMNS
    from monai_uda.validators.selection_report import plot_selection, selection_record, selection_table

    csv, rec_file = table_dir / "selection.csv", table_dir / "selection.json"
    table, record = load_table(table_dir)
    unknown = sorted(set(checkpoints) - set(table.index))
    if unknown:
        raise SystemExit(f"{csv}: no candidate {', '.join(unknown)} to rescore (it has {', '.join(table.index)})")
    missing = sorted(set(table.index) - set(checkpoints))
    if whole and missing:
        raise SystemExit(f"{csv}: scoring the whole table needs every candidate's model; none for {', '.join(missing)}")
    recomputed = ("rule_score", "chosen", "checkpoint")  # selection_table writes them again
    validators = [c for c in table.columns if c not in (*TIMING_COLUMNS, *recomputed)]
    solo, emptied = (validators, []) if whole else alone(validators)
    clash = sorted(set(record.get("rule_columns", [])) & set(emptied))
    if clash:  # before any model is loaded or scored
        raise SystemExit(f"{rec_file}: its rule uses {', '.join(clash)}, which a candidate scored alone cannot have: "
                         "score the seed again with `monai-uda select`")
    uda = as_uda(datalist)
    networks = {n: load_weights(UDAUNet(uda.spatial_dims, uda.in_channels, uda.num_classes), p)
                for n, p in checkpoints.items()}
    images = target_images(uda, record.get("target_images"))
    needs_stats = any("source_statistics" in validator_needs(n) for n in solo)
    scores = score_candidates(networks, images, validators=solo,
                              inferer=default_inferer(uda.spatial_dims, roi_size), progress=progress,
                              source_statistics=source_statistics(uda, label_limit) if needs_stats else None)
    df = table.drop(columns=[c for c in recomputed if c in table])
    for name in checkpoints:
        df.loc[name, solo + list(TIMING_COLUMNS)] = scores.loc[name, solo + list(TIMING_COLUMNS)]
        if emptied:
            df.loc[name, emptied] = math.nan
    rule = record.get("rule", "default")
    choice, reason = select(df, rule)
    paths = table["checkpoint"].to_dict() if "checkpoint" in table else {}
    paths.update({n: os.path.abspath(p) for n, p in checkpoints.items()})
    new = selection_table(df, choice, rule, paths)
    when = datetime.datetime.now().isoformat(timespec="seconds")
    rescored = dict(record.get("rescored", {}))
    rescored.update({n: {"checkpoint": os.path.abspath(p), "sha256": file_hash(p), "date": when, "emptied": emptied,
                         "why": "scored again with every candidate's current model (--whole)" if whole else
                                "rescored alone after its benchmark row was rerun: the validators that need the "
                                "source model or the other candidates are empty"} for n, p in checkpoints.items()})
    facts = {k: v for k, v in record.items()
             if k not in ("chosen", "reason", "rule", "rule_columns", "date", "scores", "checkpoint", "rescored")}
    out = selection_record(new, choice, reason, rule, checkpoint=paths.get(choice, ""), **facts)
    out["date"], out["rescored"] = record.get("date", when), rescored
    atomic_write_text(csv, new.to_csv(index_label="candidate"))
    title = f"{uda.name}: {record.get('candidates', '')} (selected {choice}; rescored {', '.join(checkpoints)})"
    plot_selection(new, table_dir / "selection.png", rule, title=title)
    atomic_write_text(rec_file, json.dumps(out, indent=2, default=str))
    return new


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("table", type=Path, help="a folder with selection.csv and selection.json")
    p.add_argument("--datalist", required=True, help="the pair's datalist (target_training images are read)")
    p.add_argument("--bench", required=True, type=Path, help="the benchmark folder with the rerun models")
    p.add_argument("--seed", type=int, default=None, help="default: the table folder's name (seed<k>)")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--methods", nargs="+", help="the rerun candidates to rescore")
    which.add_argument("--whole", action="store_true",
                       help="score every candidate of the table again with every validator (needs all their models)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    from monai_uda.networks import UDAUNet
    from monai_uda.validators.candidates import as_uda, seed_candidates

    torch.set_num_threads(a.threads)
    if a.seed is None and not (a.table.name.startswith("seed") and a.table.name[4:].isdigit()):
        raise SystemExit(f"{a.table}: its name is not seed<k>; give the seed with --seed")
    seed = a.seed if a.seed is not None else int(a.table.name[4:])
    uda = as_uda(a.datalist)
    methods = list(load_table(a.table)[0].index) if a.whole else a.methods
    found = seed_candidates(a.bench / f"seed{seed}", methods,
                            lambda: UDAUNet(uda.spatial_dims, uda.in_channels, uda.num_classes))
    if found.skipped:
        raise SystemExit(f"{a.bench / f'seed{seed}'}: " + "; ".join(f"{m}: {why}" for m, why in found.skipped.items()))
    new = rescore(a.table, a.datalist, found.checkpoints, whole=a.whole)
    shown = [c for c in new.columns if c != "checkpoint"]
    print(new[shown].to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"rescored {', '.join(methods)} in {a.table}; selected {new.index[new.chosen][0]}")


if __name__ == "__main__":
    main()
