"""Diminishing-returns checks of the benchmark budgets (docs/benchmarks/protocol.md).

A budget that is smaller than its paper's (or that the paper does not give) is past the point of diminishing
returns on a pair when doubling it does not raise the target-test Dice significantly: each check reruns one
method with its budget doubled (the 2x run), seeds 0 1 2, on the same source models and forests as the v2
benchmark's own (1x) rows, and compares the two per image, paired over (seed, image), with the two-sided
Wilcoxon test of the tables (level 0.05).

    python scripts/budget_checks.py run [NAME ...] [--seeds K ...]   # the 2x runs (one job at a time), copied
                                                                     # to docs/
    python scripts/budget_checks.py                    # print the table (protocol_tables.py --write puts it
                                                       # into protocol.md)

The 1x rows are ``docs/benchmarks/v2/<pair>/`` (``scripts/full_benchmarks.sh``) unless a check names its own
(``Check.one``: a budget the bundle has since left); a 2x run needs that pair's v2 run folder (``results/v2/<pair>``,
for the source models) on this machine: a source model trained again on another machine differs from the one the
1x rows used, so a check that needs source models refuses to run without them, unless it runs its own 1x rows
(``Check.own``: ``results/budget/<name>/1x``, copied to ``budget/<name>/*_1x.*``) on source models it trains, the
2x run starting from the same models. Its output is ``results/budget/<name>/``, copied to
``docs/benchmarks/budget/<name>/``. A check that names its 2x rows (``Check.two``) is done: ``run`` skips it (its
rows were made with settings the bundle has since left, and a new 2x run would not match its 1x rows).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from monai_uda.benchmarks.runner import PER_IMAGE_FILES, RESULT_FILES, source_model_path
from monai_uda.bundle.stages import model_card_path
from monai_uda.evaluation.significance import paired_test
from monai_uda.utils import atomic_write, atomic_write_text

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "benchmarks"


@dataclass(frozen=True)
class Check:
    name: str
    pair: str
    method: str
    setting: str  #: what is doubled
    ours: str  #: the bundle's value (1x)
    paper: str
    overrides: dict = field(default_factory=dict)  #: the 2x run's bundle overrides
    reuse: tuple[str, ...] = ()  #: per-seed stage folders of the v2 run that the 2x run keeps (not doubled)
    needs_source: bool = True
    #: the 1x rows (relative to docs/benchmarks/); default the pair's v2 rows. A check whose 1x budget the bundle
    #: has since left keeps its 1x rows beside its 2x ones (``budget/<name>/per_image_1x.csv``).
    one: str = ""
    #: the 2x rows (relative to docs/benchmarks/); default ``budget/<name>/per_image.csv``. A check whose larger
    #: budget the bundle adopted reads it from the pair's v2 rows, and has no run of its own.
    two: str = ""
    #: the check runs its 1x rows too, on source models it trains itself (``budget/<name>/per_image_1x.csv``): for a
    #: pair whose v2 source models no machine holds, since a source model trained again elsewhere is another model
    own: bool = False

    def one_path(self, root: Path) -> Path:
        if self.own and not self.one:
            return root / "budget" / self.name / "per_image_1x.csv"
        return root / (self.one or f"v2/{self.pair}/per_image.csv")

    def two_path(self, root: Path) -> Path:
        return root / (self.two or f"budget/{self.name}/per_image.csv")


#: seeds a verdict needs before it is more than provisional (the protocol's three seeds)
MIN_SEEDS = 3

CHECKS = [
    Check("buda_rounds", "A1", "buda", "rounds T and their iterations", "3 rounds, 12 × 20 iterations in all",
          "n/s (Fig. 5 plots more than 3 rounds)", {"num_rounds": 6, "max_epochs": 24}),
    Check("selftrain_rounds", "A1", "selftrain", "rounds and their iterations", "3 rounds, 12 × 20 iterations",
          "n/s", {"num_rounds": 6, "max_epochs": 24}),
    Check("st_rounds", "A1", "st", "rounds and their iterations", "3 rounds, 12 × 20 iterations", "n/s",
          {"num_rounds": 6, "max_epochs": 24}),
    Check("early_budget", "A1", "early", "head training and refinement cap", "12 × 20 each",
          "n/s; refinement \"up to five epochs\"", {"max_epochs": 24}),
    # the enhancer's 12 epochs were short (2x better), so the bundle went to 24 and 48 is checked against 24; the
    # pseudo-label net's check is repeated on the 24-epoch enhancer. The 12-epoch checks keep their 1x rows.
    Check("s2d_enhancer", "A1", "enhancer", "Prediction Enhancer iterations", "12 × 20 at the paper's lr 2e-4 (before)",
          "n/s (lr 2e-4, plateau schedule)", {"max_epochs": 24}, needs_source=False,
          one="budget/s2d_enhancer/per_image_1x.csv", two="budget/s2d_enhancer/per_image.csv"),
    Check("s2d_net", "A1", "s2d", "pseudo-label net iterations (12-epoch enhancer)", "12 × 20",
          "n/s (lr 2e-4, plateau schedule)", {"max_epochs": 24}, reuse=("s2d_common",), needs_source=False,
          one="budget/s2d_net/per_image_1x.csv", two="budget/s2d_net/per_image.csv"),
    # the paper's 500 forests (the bundle now) against the 60 before, both with the 24-epoch enhancer: the 1x rows
    # are the s2d_enhancer check's 2x run (60 forests), the 2x rows the v2 rows (500)
    # (both runs with the former 100-tree target forest: the v2 rows of 500 forests they compared are kept beside)
    Check("s2d_forests", "A1", "enhancer", "source Random Forests (60 -> 500, 8.3x; 24-epoch enhancer, 100-tree "
          "target forest)", "60 forests of 10 trees (before)", "500 to 1000", needs_source=False,
          one="budget/s2d_enhancer/per_image.csv", two="budget/s2d_forests/per_image_2x.csv"),
    # 48 epochs beat 24 as well; the 48-epoch check keeps the v2 rows it compared (24 epochs) beside its own, since the
    # v2 rows are rerun with the enhancer's new rule
    Check("s2d_enhancer_48", "A1", "enhancer", "Prediction Enhancer iterations", "24 × 20 at the paper's lr 2e-4",
          "n/s (lr 2e-4, plateau schedule)", {"max_epochs": 48}, needs_source=False,
          one="budget/s2d_enhancer_48/per_image_1x.csv", two="budget/s2d_enhancer_48/per_image.csv"),
    # fixed budgets kept falling short, so the enhancer now keeps its best source_validation epoch (early stopping,
    # the source bundle's rule); this check doubles that rule's cap and both patiences against the v2 rows (the
    # learning-rate patience too: on A1 seed 0 the noisy validation Dice cut the rate twice by epoch 17)
    Check("s2d_enhancer_val", "A1", "enhancer", "Prediction Enhancer: cap, early-stopping and learning-rate patience",
          "best source_validation epoch; patience 10 (lr: 4), cap 100 × 20 (before)", "n/s (lr 2e-4, plateau schedule)",
          {"max_epochs": 200, "early_stop_patience": 20, "lr_patience": 8}, needs_source=False,
          one="budget/s2d_enhancer_val/per_image_1x.csv"),  # the v2 rows of that rule, since rerun at 4x
    # that doubling helped (+0.016), so before the bundle adopts it, the doubled rule is doubled again: 4x against the
    # 2x rows of s2d_enhancer_val (its "1x" column here)
    Check("s2d_enhancer_val_4x", "A1", "enhancer", "Prediction Enhancer: cap and both patiences doubled again",
          "patience 20 (lr: 8), cap 200 × 20 (s2d_enhancer_val's 2x; before)", "n/s (lr 2e-4, plateau schedule)",
          {"max_epochs": 400, "early_stop_patience": 40, "lr_patience": 16}, needs_source=False,
          one="budget/s2d_enhancer_val/per_image.csv"),
    # 4x helped too (+0.041, p 0.005) and the bundle took it (train_enhancer.json): 8x against the 4x rows of
    # s2d_enhancer_val_4x, the bundle's rule
    Check("s2d_enhancer_val_8x", "A1", "enhancer", "Prediction Enhancer: cap and both patiences doubled a third time",
          "patience 40 (lr: 16), cap 400 × 20", "n/s (lr 2e-4, plateau schedule)",
          {"max_epochs": 800, "early_stop_patience": 80, "lr_patience": 32}, needs_source=False,
          one="budget/s2d_enhancer_val_4x/per_image.csv"),
    Check("s2d_net_e24", "A1", "s2d", "pseudo-label net iterations (24-epoch enhancer, 100-tree target forest)",
          "12 × 20", "n/s (lr 2e-4, plateau schedule)", {"max_epochs": 24}, reuse=("s2d_common",), needs_source=False,
          one="budget/s2d_net_e24/per_image_1x.csv", two="budget/s2d_net_e24/per_image.csv"),
    # 8x helped again (+0.023, p < 0.001) and the bundle took it: 16x against the 8x rows
    Check("s2d_enhancer_val_16x", "A1", "enhancer", "Prediction Enhancer: cap and both patiences doubled a fourth time",
          "patience 80 (lr: 32), cap 800 × 20", "n/s (lr 2e-4, plateau schedule)",
          {"max_epochs": 1600, "early_stop_patience": 160, "lr_patience": 64}, needs_source=False,
          one="budget/s2d_enhancer_val_8x/per_image.csv"),
    # the net's checks above were made with weaker enhancers; with the 4x-rule enhancer the net agreed with its
    # teacher's masks at only 0.63 Dice on the images it learns from (docs/benchmarks/s2d_teacher/A1), so its budget is
    # checked again on the 8x-rule enhancers of the v2 rows (keeping their enhancers and target forests)
    Check("s2d_net_e8x", "A1", "s2d", "pseudo-label net iterations (8x-rule enhancer)", "12 × 20 (before)",
          "n/s (lr 2e-4, plateau schedule)", {"max_epochs": 24}, reuse=("s2d_common",), needs_source=False,
          one="budget/s2d_net_e8x/per_image_1x.csv"),  # the v2 rows of 12 epochs, since rerun at 24
    # 24 epochs helped (+0.088, p < 0.001): 48 against the 24-epoch rows
    Check("s2d_net_e8x_4x", "A1", "s2d", "pseudo-label net iterations doubled again (8x-rule enhancer)",
          "24 × 20 (before)", "n/s (lr 2e-4, plateau schedule)", {"max_epochs": 48}, reuse=("s2d_common",),
          needs_source=False, one="budget/s2d_net_e8x/per_image.csv"),
    # 48 helped again (+0.035, p < 0.001): 96 against the v2 rows of 48 epochs (two threads, as this check)
    Check("s2d_net_e8x_8x", "A1", "s2d", "pseudo-label net iterations doubled a third time (8x-rule enhancer)",
          "48 × 20 (before)", "n/s (lr 2e-4, plateau schedule)", {"max_epochs": 96}, reuse=("s2d_common",),
          needs_source=False, one="budget/s2d_net_e8x_8x/per_image_1x.csv"),  # the v2 rows of 48 epochs
    # 96 helped again and the bundle took them (adapt.json): 192 against the 96-epoch rows (the v2 rows of 96 equal
    # these to every image's Dice)
    Check("s2d_net_e8x_16x", "A1", "s2d", "pseudo-label net iterations doubled a fourth time (8x-rule enhancer)",
          "96 × 20", "n/s (lr 2e-4, plateau schedule)", {"max_epochs": 192}, reuse=("s2d_common",),
          needs_source=False, one="budget/s2d_net_e8x_8x/per_image.csv"),
    # 192 helped again (+0.020, p < 0.001) and the bundle took them: 384 against the 192-epoch rows
    Check("s2d_net_e8x_32x", "A1", "s2d", "pseudo-label net iterations doubled a fifth time (8x-rule enhancer)",
          "192 × 20", "n/s (lr 2e-4, plateau schedule)", {"max_epochs": 384}, reuse=("s2d_common",),
          needs_source=False, one="budget/s2d_net_e8x_16x/per_image.csv"),
    Check("past_translator", "D1", "past", "translator iterations", "12 × 20", "n/s (NICE-GAN)",
          {"translation_epochs": 24}),
    # the segmenter's self-training rounds: nnU-Net's own budget is far larger than our 12 x 20 iterations a round.
    # D1's v2 source models are on no machine now, so it runs its own 1x rows beside the 2x ones, on its own models
    Check("past_rounds", "D1", "past", "self-training iterations a round", "2 rounds of 12 × 20",
          "K = 2; iterations n/s (nnU-Net)", {"round_max_epochs": 24}, own=True),
]


def _value(v) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def run(check: Check, data_root: str, out_root: Path, threads: int, seeds: tuple[int, ...] = (0, 1, 2)) -> None:
    """The 2x run of ``check`` for ``seeds`` (resuming; a new machine continues from the committed rows, whose other
    seeds stay), then its outputs copied to ``docs/benchmarks/budget/<name>/``."""
    if check.two:
        print(f"{check.name}: nothing to run (its 2x rows are {check.two})")
        return
    out = out_root / check.name
    one = out / "1x" if check.own else REPO / "results" / "v2" / check.pair
    dst = DOCS / "budget" / check.name
    _restore(check, dst, out, "")
    base = [sys.executable, "-m", "monai_uda", "benchmark", "--pair", check.pair, "--data-root", data_root,
            "--methods", check.method, "--seeds", *map(str, seeds)]
    if check.own:  # the 1x rows on this machine's source models; a seed whose models are not here runs 1x and 2x anew
        _restore(check, dst, one, "_1x")
        again = [s for s in seeds if not _has_source(one, s)]
        for folder in (one, out):
            _forget_seeds(folder, again)
        cmd = base + ["--out", str(one), "--resume", "--threads", str(threads)]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=REPO)
        _copy_back(one, dst, "_1x")
    for seed in seeds:  # the 1x run's stages that this check keeps
        for stage in check.reuse:
            kept, copy = one / f"seed{seed}" / stage, out / f"seed{seed}" / stage
            if not kept.is_dir():
                raise SystemExit(f"{check.name}: {kept} not found (run the v2 benchmark of {check.pair} first)")
            if not copy.exists():  # copied whole or not at all: a stopped copy must not pass for the stage
                tmp = copy.with_name(copy.name + ".copying")
                shutil.rmtree(tmp, ignore_errors=True)
                shutil.copytree(kept, tmp)
                os.replace(tmp, copy)
    cmd = base + ["--out", str(out), "--resume", "--threads", str(threads)]
    if check.needs_source:
        # a source model trained again is deterministic on one machine but not across machines (A1 seed 0's source
        # validation Dice after 25 iterations: 0.397 where the v2 run was made, 0.370 on a later machine), so a 2x run
        # on retrained source models would not be paired with the 1x rows: it needs the v2 run's own models
        missing = [s for s in seeds if not _has_source(one, s)]
        if missing:
            raise SystemExit(f"{check.name}: no finished source model of seed(s) {missing} in {one}: the 1x rows "
                             f"used that run's models, and a source model trained again on another machine differs")
        cmd += ["--source-from", str(one)]
    for k, v in check.overrides.items():
        cmd += ["--override", f"{check.method}:{k}={_value(v)}"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)
    _copy_back(out, dst, "")


def _has_source(folder: Path, seed: int) -> bool:
    """Whether a benchmark folder holds ``seed``'s finished source model (its card is written when training ends)."""
    return Path(model_card_path(source_model_path(str(folder), seed))).is_file()


def _restore(check: Check, dst: Path, local: Path, suffix: str) -> None:
    """The committed rows (``dst/results{suffix}.csv``, ``per_image{suffix}.csv``) join ``local``'s (which win a
    clash), so rows made on another machine are not lost on copying back."""
    if not (dst / f"results{suffix}.csv").is_file():
        return
    if not (dst / f"per_image{suffix}.csv").is_file():
        raise SystemExit(f"{check.name}: {dst / f'per_image{suffix}.csv'} not found beside "
                         f"{dst / f'results{suffix}.csv'}")
    local.mkdir(parents=True, exist_ok=True)
    for f in ("results", "per_image"):
        _merge_rows(dst / f"{f}{suffix}.csv", local / f"{f}.csv")


def _forget_seeds(folder: Path, seeds: list[int]) -> None:
    """Remove ``seeds``' rows from every file of a run folder that ``--resume`` reads, so that it makes them again."""
    for f in RESULT_FILES + PER_IMAGE_FILES:
        if seeds and (folder / f).is_file():
            rows = pd.read_csv(folder / f)
            atomic_write_text(str(folder / f), rows[~rows.seed.astype(int).isin(seeds)].to_csv(index=False))


def _copy_back(local: Path, dst: Path, suffix: str) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name, ext in (("results", "csv"), ("results", "md"), ("per_image", "csv")):
        atomic_write(str(dst / f"{name}{suffix}.{ext}"), lambda tmp, n=f"{name}.{ext}": shutil.copyfile(local / n, tmp))


def _merge_rows(committed: Path, local: Path) -> None:
    """Add to ``local`` (written atomically) the rows of ``committed`` whose (method, seed) it lacks."""
    theirs = pd.read_csv(committed)
    if not local.is_file():
        atomic_write_text(str(local), theirs.to_csv(index=False))
        return
    ours = pd.read_csv(local)
    have = set(zip(ours.method, ours.seed.astype(int)))
    extra = theirs[[(m, int(s)) not in have for m, s in zip(theirs.method, theirs.seed)]]
    if len(extra):
        atomic_write_text(str(local), pd.concat([ours, extra], ignore_index=True).to_csv(index=False))


def mean_std(v: pd.Series) -> str:
    """``mean ± std`` (population std) with three decimals, the format of every protocol table; one value alone has
    no spread to show (the tables give the number of seeds beside it)."""
    return f"{v.mean():.3f}" if len(v) < 2 else f"{v.mean():.3f} ± {v.std(ddof=0):.3f}"


def _rows(path: Path, method: str) -> pd.DataFrame:
    df = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["method", "seed", "name", "dice"])
    return df[df.method == method]


def p_text(p: float) -> str:
    """``p < 0.001``, ``p 0.123``, or ``p n/a`` (too few pairs for a test): the p-value of every protocol table."""
    return "p n/a" if not math.isfinite(p) else ("p < 0.001" if p < 0.001 else f"p {p:.3f}")


def budget_table(root: Path = DOCS) -> str:
    """One row per check: the 1x and 2x Dice (mean ± std over seeds) and the paired test of 2x against 1x."""
    lines = ["| check | pair | method | doubled | ours (1x) | paper | 1x Dice | 2x Dice | 2x − 1x (p) | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in CHECKS:
        one, two = c.one_path(root), c.two_path(root)
        cells = [c.name, c.pair, f"`{c.method}`", c.setting, c.ours, c.paper]
        a = _rows(one, c.method).assign(method="1x")
        b_all = _rows(two, c.method).assign(method="2x")
        b = b_all[b_all.seed.isin(a.seed.unique())]  # paired: the seeds both have, in both columns
        a = a[a.seed.isin(b.seed.unique())] if not b.empty else a
        if a.empty or b.empty:
            why = " and ".join(n for n, df in (("1x", a), ("2x", b_all)) if df.empty) or "2x with 1x's seeds"
            lines.append("| " + " | ".join(cells + ["—", "—", "—", f"not measured ({why} not run yet)"]) + " |")
            continue
        t = paired_test(pd.concat([a, b]), "2x", baseline="1x")
        per_seed = lambda df: df.groupby("seed").dice.mean()  # noqa: E731
        verdict = {"+": "more helps: 1x is short", "-": "2x is worse: past diminishing returns",
                   "=": "no significant difference: past diminishing returns", "?": "too few pairs"}[t["mark"]]
        if t["mark"] != "?" and b.seed.nunique() < MIN_SEEDS:  # a claim needs three seeds (protocol.md)
            verdict = f"provisional, {b.seed.nunique()} of {MIN_SEEDS} seeds: {verdict}"
        lines.append("| " + " | ".join(cells + [
            f"{mean_std(per_seed(a))} ({a.seed.nunique()})", f"{mean_std(per_seed(b))} ({b.seed.nunique()})",
            f"{t['mean_diff']:+.3f} ({p_text(t['p'])})", verdict]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd")
    r = sub.add_parser("run", help="the 2x runs (one at a time)")
    r.add_argument("names", nargs="*", help=f"checks (default all): {', '.join(c.name for c in CHECKS)}")
    r.add_argument("--pair", default=None, help="only the checks on this pair")
    r.add_argument("--data-root", default=os.environ.get("MONAI_UDA_DATA", "../shared/data"))
    r.add_argument("--out", type=Path, default=REPO / "results" / "budget")
    r.add_argument("--threads", type=int, default=int(os.environ.get("MONAI_UDA_THREADS", "1")))
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds to run now (default 0 1 2; the rows of other seeds are kept)")
    a = p.parse_args()
    if a.cmd != "run":
        print(budget_table())
        return
    by_name = {c.name: c for c in CHECKS}
    unknown = [n for n in a.names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown check(s) {unknown}; choose from {sorted(by_name)}")
    names = [n for n in a.names or list(by_name) if a.pair is None or by_name[n].pair == a.pair]
    if not names:
        print(f"no check on pair {a.pair} among {a.names or 'all checks'}")
    for name in names:
        run(by_name[name], a.data_root, a.out, a.threads, tuple(a.seeds))


if __name__ == "__main__":
    main()
