"""Drop benchmark rows made at a budget the bundle has since left, so that ``--resume`` runs them again.

A row records the budget it ran with where a bundle's budget has changed after rows were made: each shallow-to-deep
row that uses the seed's Prediction Enhancer (``enhancer``, ``s2d``, ``s2d_noteacher``, ``s2d_norect``; not ``rf``,
the target forest alone) records ``enhancer_epochs``. A row is stale when that column differs from
``train_enhancer.json``'s ``max_epochs``, or when its ``enhancer_validated`` (whether the enhancer kept its best epoch
on source_validation; missing: it did not) differs from the bundle's ``validate_during_training``; a row that lacks
``enhancer_epochs`` was made before it was recorded, at 24 epochs. A pseudo-label net's row (``s2d``,
``s2d_noteacher``, ``s2d_norect``) is stale too when its ``epochs`` (the net's, which trains a fixed budget) differ
from ``adapt.json``'s ``max_epochs``; a row without ``epochs`` is not judged on it.

    python scripts/stale_rows.py FOLDER [FOLDER ...]          # list the stale rows
    python scripts/stale_rows.py FOLDER [FOLDER ...] --drop   # remove them (and their per-image rows)
    python scripts/stale_rows.py FOLDER --drop --seeds 0      # those of seed 0 only (a rerun seed by seed, whose
                                                              # committed tables keep the other seeds' rows meanwhile)
    python scripts/stale_rows.py FOLDER --drop --methods s2d_noteacher   # those of one method only (likewise)

FOLDER is a benchmark folder (``results.csv``, ``per_image.csv``), e.g. ``results/v2/A1``; the dropped rows are
kept in its ``superseded_results.csv`` and ``superseded_per_image.csv`` (the validator study's selection tables
scored their models). Rerun it with ``--resume`` (``scripts/full_benchmarks.sh``): a seed's shared forests and
enhancer (``seed<k>/s2d_common``) are built again when made at another budget. Other rows are kept as they are: a
``selected`` row keeps the pick it made among the candidates of its time (rerunning it needs every candidate's
model).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from monai_uda.benchmarks.methods_s2d import UNRECORDED_ENHANCER_EPOCHS, enhancer_epochs, enhancer_validated, net_epochs
from monai_uda.benchmarks.runner import PER_IMAGE_FILES, RESULT_FILES
from monai_uda.utils import atomic_write_text

#: the rows that depend on the enhancer's budget
S2D_FAMILY = ("enhancer", "s2d", "s2d_noteacher", "s2d_norect")
#: the rows of those that train a pseudo-label net, whose own budget is adapt.json's
NETS = tuple(m for m in S2D_FAMILY if m != "enhancer")


def stale(results: pd.DataFrame, epochs: int, validated: bool = False, seeds=None,
          nets: int | None = None, methods=None) -> pd.DataFrame:
    """The (method, seed) rows of :data:`S2D_FAMILY` whose enhancer did not train ``epochs`` epochs (the cap, when
    validated), or was (not) ``validated`` on source_validation, or (given ``nets``) the rows of :data:`NETS` whose
    net did not train ``nets`` epochs; only those of ``seeds`` and of ``methods`` when given."""
    family = results[results.method.isin(S2D_FAMILY if methods is None else set(S2D_FAMILY) & set(methods))]
    if seeds is not None:
        family = family[family.seed.astype(int).isin([int(s) for s in seeds])]
    missing = pd.Series(float("nan"), family.index)
    recorded = family.get("enhancer_epochs", missing).fillna(UNRECORDED_ENHANCER_EPOCHS)
    was_validated = family.get("enhancer_validated", missing).map(lambda v: bool(v) if pd.notna(v) else False)
    other = (recorded != epochs) | (was_validated != validated)
    if nets is not None:
        trained = family.get("epochs", missing)
        other |= family.method.isin(NETS) & trained.notna() & (trained != nets)
    return family[other][["method", "seed"]]


#: the files of a benchmark folder that hold finished rows: the tables, and the partial files of a run that stopped
#: (``--resume`` reads those too, so a row dropped from the tables alone would come back)
ROW_FILES = tuple(f for both in zip(RESULT_FILES, PER_IMAGE_FILES) for f in both)  # results, per-image, ...


#: where dropped rows go (appended), beside the tables: the validator study's selection tables scored the models
#: of those rows, so it reads their Dice from here (scripts/validator_study.py)
SUPERSEDED = {"results.csv": "superseded_results.csv", "per_image.csv": "superseded_per_image.csv"}


def drop(folder: Path, epochs: int, validated: bool = False, seeds=None, nets: int | None = None,
         methods=None) -> pd.DataFrame:
    """Remove the stale rows of ``folder`` from every file that holds finished rows (:data:`ROW_FILES`), keeping those
    of the tables in :data:`SUPERSEDED`; returns them (those of ``results.csv`` and of a stopped run's partial
    table); only those of ``seeds`` and of ``methods`` when given."""
    tables = {name: pd.read_csv(folder / name) for name in ROW_FILES if (folder / name).is_file()}
    gone = pd.concat([stale(df, epochs, validated, seeds, nets, methods) for name, df in tables.items()
                      if name in ROW_FILES[::2]]).drop_duplicates()
    if gone.empty:
        return gone
    keys = set(zip(gone.method, gone.seed.astype(int)))
    for name, df in tables.items():
        dropped = pd.Series([(m, int(s)) in keys for m, s in zip(df.method, df.seed)], index=df.index, dtype=bool)
        if name in SUPERSEDED:
            archive = folder / SUPERSEDED[name]
            kept = [pd.read_csv(archive)] if archive.is_file() else []
            atomic_write_text(archive, pd.concat(kept + [df[dropped]], ignore_index=True).to_csv(index=False))
        atomic_write_text(folder / name, df[~dropped].to_csv(index=False))
    return gone


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--drop", action="store_true", help="remove the stale rows (default: list them)")
    p.add_argument("--seeds", type=int, nargs="+", help="only these seeds' rows (default: every seed's)")
    p.add_argument("--methods", nargs="+", choices=S2D_FAMILY, help="only these methods' rows (default: every one's)")
    a = p.parse_args()
    epochs, validated, nets = enhancer_epochs({}), enhancer_validated({}), net_epochs({})  # the bundle's
    for folder in a.folders:
        if not (folder / "results.csv").is_file():
            raise SystemExit(f"{folder / 'results.csv'}: not found")
        rows = drop(folder, epochs, validated, a.seeds, nets, a.methods) if a.drop else stale(
            pd.read_csv(folder / "results.csv"), epochs, validated, a.seeds, nets, a.methods)
        what = "dropped" if a.drop else "stale"
        print(f"{folder}: {len(rows)} {what} row(s) (enhancer_epochs != {epochs} or enhancer_validated != "
              f"{validated}, or a net's epochs != {nets})"
              + ("" if rows.empty else ": " + ", ".join(f"{m} seed {s}" for m, s in zip(rows.method, rows.seed))))


if __name__ == "__main__":
    main()
