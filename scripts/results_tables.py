"""Result tables (markdown) from the benchmark CSVs in docs/benchmarks/<pair>/results.csv.

    python scripts/results_tables.py [docs/benchmarks]                                  # print the tables
    python scripts/results_tables.py [docs/benchmarks] --write docs/benchmarks/README.md  # write the whole page

Tables: target-test Dice (gap closed) of every method on every pair; and the per-family columns the
method issues ask for (epochs to convergence, Dice loss and IoU, F1 and scribble budget, translation time).
Only numbers in the CSVs are printed; a method not run on a pair is shown as "—".

``--write`` writes docs/benchmarks/README.md: a fixed header with the commands that made the numbers, the
tables above, the run-to-run differences of source and oracle, every pair's full metric table, the demo
table (from docs/benchmarks/demo/results.csv), then the analysis text kept below in this script
(``SPEED``, ``ANALYSIS``). Edit this script, not the generated page, and rerun it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

PAIRS = ["A1", "B2", "C1", "D1"]
ORDER = ["source", "oracle", "bn_source", "bn", "bn_reset", "early", "st", "cbst", "buda", "selftrain", "mcdropout", "rf", "enhancer", "s2d",
         "s2d_noteacher", "s2d_norect", "past", "fda", "histmatch"]


#: sub-folder of a pair's results holding a later rerun of some methods (with that run's own source and oracle)
RERUNS = {"early": "early_guard"}


def load(root: Path, sub: str = "") -> pd.DataFrame | None:
    """Every pair's ``<root>/<pair>/<sub>/results.csv`` in one table (None if there is none)."""
    files = [root / p / sub / "results.csv" for p in PAIRS]
    frames = [pd.read_csv(f) for f in files if f.is_file()]
    return pd.concat(frames, ignore_index=True) if frames else None


def with_reruns(df: pd.DataFrame, root: Path) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Replace each rerun method's rows by those of its rerun; returns the table and the reruns."""
    reruns = {}
    for method, sub in RERUNS.items():
        rr = load(root, sub)
        if rr is None:
            continue
        reruns[method] = rr
        df = pd.concat([df[~((df.method == method) & df.pair.isin(rr.pair.unique()))], rr[rr.method == method]],
                       ignore_index=True)
    return df, reruns


def _early_outcome(r) -> str:
    if "diverged" in r and bool(r.diverged == True):  # noqa: E712 (NaN-safe)
        return f"{int(r.epochs)} (guard: restored epoch {int(r.restored_epoch)})"
    return f"{int(r.epochs)} ({'stopped' if bool(r.converged) else 'cap'})"


def cell(df: pd.DataFrame, pair: str, method: str, fmt) -> str:
    row = df[(df.pair == pair) & (df.method == method)]
    return "—" if row.empty else fmt(row.iloc[0])


def table(df: pd.DataFrame, methods, pairs, fmt, header: str) -> str:
    lines = [f"| {header} | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
    for m in methods:
        if (df.method == m).any():
            lines.append(f"| {m} | " + " | ".join(cell(df, p, m, fmt) for p in pairs) + " |")
    return "\n".join(lines)


def dice_tables(df: pd.DataFrame, reruns: dict[str, pd.DataFrame], pairs: list[str]) -> str:
    """The summary table (target-test Dice, gap closed) and, per rerun method, its rerun's own table."""
    mark = lambda r: " †" if r.method in reruns else ""  # noqa: E731
    out = ["Target-test Dice (gap closed):\n",
           table(df, ORDER, pairs, lambda r: f"{r.dice:.3f} ({r.gap_closed:+.2f}){mark(r)}", "method")]
    for method, rr in reruns.items():
        out.append(f"\n† {method}: rerun ({RERUNS[method]}/), gap closed against that run's own source and oracle:\n")
        out.append(table(rr, ["source", "oracle", method], [p for p in pairs if (rr.pair == p).any()],
                         lambda r: f"{r.dice:.3f} ({r.gap_closed:+.2f})", "method"))
    return "\n".join(out)


def family_tables(df: pd.DataFrame, pairs: list[str]) -> str:
    """The per-family columns: early-feature epochs, BUDA-Seg Dice loss / IoU, shallow-to-deep F1, PAST times."""
    out = ["\nSelf-training of early features: epochs run (cap = budget epochs) and how refinement ended:\n",
           table(df, ["early"], pairs, _early_outcome, "method"),
           "\nBUDA-Seg family: Dice loss / IoU on the target test set (paper Table 1 reports both):\n",
           table(df, ["source", "buda", "selftrain", "mcdropout", "oracle"], pairs,
                 lambda r: f"{r.dice_loss:.3f} / {r.iou:.3f}", "method"),
           "\nShallow-to-deep: F1 (simulated scribbles: images / labelled pixels, of which foreground):\n",
           table(df, ["source", "rf", "enhancer", "s2d", "s2d_noteacher", "s2d_norect", "oracle"], pairs,
                 lambda r: f"{r.f1:.3f}", "method")]
    s = df[df.method == "s2d"]
    out.append("\nscribble budget: " + "; ".join(
        f"{r.pair} {int(r.scribble_images)} images, {int(r.scribble_pixels)} px ({int(r.scribble_fg_pixels)} fg)"
        for r in s.itertuples()))
    if "translation_seconds" in df:
        out.append("\nPAST: CycleGAN translation training time (s) / whole method (s):\n")
        out.append(table(df, ["past"], pairs, lambda r: f"{r.translation_seconds:.0f} / {r.seconds:.0f}", "method"))
    return "\n".join(out)


def tables(root: str = "docs/benchmarks") -> str:
    """Everything that ``python scripts/results_tables.py`` prints."""
    df, reruns = with_reruns(load(Path(root)), Path(root))
    pairs = [p for p in PAIRS if (df.pair == p).any()]
    return dice_tables(df, reruns, pairs) + "\n" + family_tables(df, pairs)


# ------------------------------------------------------------------------------------ the generated page

HEADER = """\
# Benchmark results

<!-- Generated by `python scripts/results_tables.py --write docs/benchmarks/README.md` from
docs/benchmarks/*/results.csv. Edit scripts/results_tables.py, not this file. -->

## Protocol v2 (the current benchmark)

The rules are [protocol.md](protocol.md): three seeds, source and oracle trained to convergence on their
own validation data, each method's budget from its bundle config, paired tests against source. The
results are [v2/README.md](v2/README.md) (per pair: `v2/<pair>/results.csv` and `per_image.csv`). They are
made, one job at a time, by

```bash
MONAI_UDA_THREADS=2 bash scripts/full_benchmarks.sh  # every pair and method, seeds 0 1 2, resuming; copies to
                                              # v2/<pair>/ (a pair with rows keeps their thread count: A1, C1 one)
MONAI_UDA_THREADS=2 bash scripts/benchmark_by_seed.sh D1  # one pair seed by seed, each seed's follow-ups (selection
                                              # table, early teacher, budget checks) before the next (how D1 runs)
python scripts/budget_checks.py run           # the diminishing-returns checks (2x budgets) of protocol.md
python scripts/protocol_tables.py --write     # the tables of protocol.md, v2/README.md and the README
MONAI_UDA_THREADS=2 bash scripts/fidelity_runs.sh  # extra seeds, the demo pair, early-head/variance analyses
python scripts/fidelity_tables.py --write     # fidelity.md: each method against its paper
```

## Protocol v1 (superseded, kept for the record)

The numbers below are not results: one seed, every model trained for the same 240 iterations, source
and oracle underfit.

Full mode, seed 0, CPU (2 cores), measured on 2026-12-02. The numbers came from these commands of the
v1 tree (commit 16cf921; `scripts/full_benchmarks.sh` now runs v2), from the repository root:

```bash
bash scripts/full_benchmarks.sh            # every pair, every method, resuming; tables to docs/benchmarks/<pair>/
# one pair, e.g.:
monai-uda benchmark --pair A1 --data-root ../shared/data --out results/full/A1 \\
    --methods source,oracle,bn,early,st,cbst,buda,selftrain,mcdropout,rf,enhancer,s2d,s2d_noteacher,s2d_norect
# the early rows (†): early-feature refinement with its divergence guard, rerun with its own source and
# oracle; tables copied to docs/benchmarks/<pair>/early_guard/
monai-uda benchmark --pair A1 --data-root ../shared/data --methods source,oracle,early \\
    --out results/early_guard/A1 --resume
# the demo table: `monai-uda demo` writes results/demo/, copied to docs/benchmarks/demo/
monai-uda demo
# this page
python scripts/results_tables.py --write docs/benchmarks/README.md
```

Budget, the same for every method of a pair: 2D 12 epochs x 20 iterations, batch 4 x 2 crops of
128²; 3D (D1) 10 epochs x 20 iterations, batch 1 x 2 crops of 48³. Which methods ran on which pair
follows the method issues: shallow-to-deep on the 2D pairs; PAST, FDA and histogram matching on C1
and D1. Gap closed = (method − source) / (oracle − source) on Dice.

**These are single-seed numbers.** Two trainings of the same source or oracle config differed by
0.00-0.15 Dice, by more than 0.05 in three of eight cases (table below): take the run-to-run noise as
0.05-0.15 Dice. Most differences between methods in these tables are not significant.
"""

NOISE = """\
## Run-to-run differences

Source and oracle were trained twice with the same config and budget: in the main run and in the
early-feature rerun (B2 and D1's rerun reused, with `--resume`, the source model of an earlier
`--methods source,early` run). Target-test Dice of each training and the difference:
"""

RUN_CONDITIONS = """\
The `seconds` columns were measured while other jobs shared the 2 cores (B2 and D1's adaptation
rows ran side by side, one thread each) and are not a speed comparison; the speed scripts below are.
Floating-point order (thread count) changes the trained model: B2's source model came out at 0.657 in
the main run against 0.721 in an earlier two-thread run of the same command. Each pair's chart and
the extra columns of each method are in `docs/benchmarks/<pair>/results.{md,csv,png}` (reruns in
`docs/benchmarks/<pair>/early_guard/`).
"""

DEMO = """\
## Demo pair

`monai-uda demo` with its demo budget, on the **simulated** shift (2 min 36 s for its 8 rows on an idle 2-core CPU,
2026-12-06; the same table in a fresh clone with a new virtual environment, as the repository README says). The
demo's crops are 64², 8 x 10 iterations: these are smoke-level numbers, not method rankings.
The `s2d` row is from 2026-12-06 17:16 (fresh clone at 084a199): the Prediction Enhancer config now builds its
trainer during `initialize` (it attaches early stopping there), so `s2d` moved from 0.471 to 0.510 although the demo
budget trains it the same way. The cause: MONAI's `DataLoader` with `num_workers=0`, when it is built, draws a seed
from torch's default generator, sets every random transform of its dataset with it (`set_rnd`) and re-seeds the
generator. Built during `run` (before), the trainer's loader overrode the `set_random_state(seed=@seed)` that
`initialize` had applied to the enhancer's augmentation; built during `initialize`, before that line (now), the line
takes effect. Both are deterministic per seed; the augmentation draws differ. On another machine (2026-12-06 22:40,
fresh clone at 4c98313: AMD EPYC with AVX512 kernels, torch 2.13.0, MONAI 1.6.1, NumPy 2.4.6) the same command gave
other numbers (oracle 0.797, early 0.018, buda 0.001, s2d 0.501, past 0.027; source, bn and fda equal): a retrained
model is deterministic on one machine, not across machines (`protocol.md`). The table below is the earlier
machine's.
"""

SPEED = """\
## Speed

2-core CPU, the benchmarks paused while these ran, 2026-12-02:

- `python -m monai_uda.benchmarks.bn_speed` printed `adapt_over_inference_ratio=0.924 adapt_seconds=3.678`
  (BN re-estimation on the 20 A1 target slices of 512²; an earlier session printed 1.036 / 2.680).
- `python -m monai_uda.benchmarks.variance_speed --repeats 2` printed `time_vs_plain=1.048
  time_vs_mcdropout=0.230 memory_vs_mcdropout=0.375`: one training step, 4 x 256², variational Dice
  K=4 vs plain Dice vs 4-pass MC-dropout, one thread. The step times are medians with the three
  variants interleaved in one process, 0.484 / 0.507 / 2.205 s. Each variant alone in a fresh process,
  where the peak memory is measured, gave 0.551 / 0.570 / 2.180 s, i.e. 1.034x. Earlier sessions timed
  each variant only alone, with few steps, and read 1.13-1.25x from run-to-run noise of ±15 %. A second
  run with `--repeats 1` printed 1.027 / 0.222 / 0.362.
- `python -m monai_uda.benchmarks.s2d_speed` (earlier session): pixel features 0.28 s per 512² slice,
  target forest from simulated strokes on 20 A1 slices 4.2 s.
"""

ANALYSIS = """\
## What they say

Seed 0, one run each (protocol v1): differences of a few Dice points are within run-to-run noise (see above).
**Protocol v2 reverses some of these conclusions** ([v2/README.md](v2/README.md)): on C1, early-feature refinement
(0.764 ± 0.002), the shallow-to-deep family and FDA beat source significantly; on the demo pair early refinement
beats source too.

- **A1** (FIB-SEM -> ssTEM mitochondria): BN re-estimation closes about half the gap in 4 s;
  self-training without variance (`selftrain`) closes 0.62 of it, BUDA-Seg (`buda`) none, MC-dropout
  rectification makes it worse. Early-feature refinement without the guard (the earlier run) stopped
  after 3 epochs by the paper's rule but lost 4 points; ST/CBST lost 6-9. Shallow-to-deep with a
  simulated user (4 scribbled slices, 2104 labelled pixels, 0.04% of the 20 target slices) follows the
  paper's pattern, RF 0.504 -> Prediction Enhancer 0.580 -> pseudo-label network 0.575, at the oracle's
  level (0.570); the paper reports F1 0.647 -> 0.840 -> 0.884 with target-trained 0.891 at a far larger
  budget. Removing the EMA teacher costs 9 points, removing rectification 1.
- **B2** (ISBI -> VNC membranes, a mild shift): the unsupervised methods close a quarter to half
  of a small gap (bn 0.702, st 0.687, cbst 0.718, buda 0.716, selftrain 0.714, mcdropout 0.719
  against source 0.657 and oracle 0.773); shallow-to-deep gains little (s2d 0.666) and the
  scribble forest alone is below source (0.630).
- **C1** (fluorescence -> H&E brightfield, inverted contrast): every label-free method fails
  (best: FDA 0.047 Dice; early-feature refinement without the guard reached 0.051 in the earlier run).
  PAST's CycleGAN, at this budget (240 iterations, 223 s of translation training), learned close to the
  identity (`C1/past_examples.png`: source, translated source, target), so PAST does not help either.
  Only shallow-to-deep, which uses the user's strokes, works: RF 0.788, PE 0.753, pseudo-label network
  0.770 (oracle 0.833).
- **D1** (BRATS T1c -> FLAIR, 3D): BN re-estimation, ST, CBST, BUDA-Seg, PAST (0.180) and FDA
  (0.201) lower the Dice; histogram matching (0.439) and self-training without variance (0.464) are
  level with source; MC-dropout rectification gains 10 points (0.555). PAST's CycleGAN (35 s of
  translation training on 2D slices) again stays close to the identity (`D1/past_examples.png`).
- **Early-feature refinement does not help on any of the four pairs.** Without a guard (the earlier
  run of the same code minus the guard) it collapsed to an almost empty segmentation on B2 (0.010)
  and D1 (0.010). Watching a B2 run epoch by epoch (target-test labels read only for that diagnosis):
  the early head starts weak on the target (early/final agreement 0.765 before refinement) and at the
  paper's learning rate (1e-3) Dice fell 0.721 -> 0.599 -> 0.496 -> ... -> 0.010 while the agreement
  *fell* (0.691, 0.590, 0.581, 0.169); at 1e-4 the drift was slower (0.689 after epoch 1, 0.646 after
  8), with BatchNorm statistics kept (`reestimate_bn="none"`) it went to all background. Eq. 2 is
  dominated by background pixels: the early layers learn to suppress what the weak head wrongly calls
  foreground, and the deep layers, seeing the same features, lose the structure too. The divergence
  guard (on by default, label-free: restore the weights of the best agreement and stop when the
  agreement falls more than 0.02 below it) now returns the source model on A1, B2 and C1 (the
  agreement fell in the first epoch). On D1 the agreement instead *rose* (0.41, 0.43, 0.83, then
  0.70) while the segmentation spread over the volume, so the guard restored epoch 2 and the Dice is
  0.120 against source 0.506: a failure no label-free signal of this method catches here. Weighting
  Eq. 2's classes by the inverse pseudo-label frequency (tried, not kept) made it worse: the B2
  agreement fell to 0.07 after one epoch, D1 Dice to 0.19.
"""


def noise_table(main: pd.DataFrame, reruns: dict[str, pd.DataFrame], pairs: list[str]) -> str:
    """Source and oracle Dice of the main run and of each rerun, with the absolute difference."""
    def dice(df: pd.DataFrame, p: str, m: str) -> float | None:
        row = df[(df.pair == p) & (df.method == m)]
        return None if row.empty else float(row.dice.iloc[0])

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.3f}"

    lines = ["| model | run | " + " | ".join(pairs) + " |", "|---|---|" + "---|" * len(pairs)]
    for m in ("source", "oracle"):
        lines.append(f"| {m} | main | " + " | ".join(fmt(dice(main, p, m)) for p in pairs) + " |")
        for name, rr in reruns.items():
            lines.append(f"| {m} | {RERUNS[name]}/ | " + " | ".join(fmt(dice(rr, p, m)) for p in pairs) + " |")
            diffs = [None if dice(main, p, m) is None or dice(rr, p, m) is None
                     else abs(dice(main, p, m) - dice(rr, p, m)) for p in pairs]
            lines.append(f"| {m} | difference | " + " | ".join(fmt(d) for d in diffs) + " |")
    return "\n".join(lines)


def pair_tables(root: Path, pairs: list[str]) -> str:
    """Every pair's full metric table (the runner's ``results.md`` format), computed from its results.csv."""
    from monai_uda.benchmarks.runner import markdown_table

    out = ["## Per pair: every metric\n",
           "Dice, IoU, F1, surface Dice, HD95 (physical units of the images), Dice loss, gap closed and seconds on "
           "the target test set, as the benchmark wrote them to `<pair>/results.md` (chart: `<pair>/results.png`). "
           "The `early` rows here are the earlier run without the divergence guard; the guarded rerun is the † "
           "table above and `<pair>/early_guard/`.\n"]
    for p in pairs:
        f = root / p / "results.csv"
        if f.is_file():
            out.append(f"### {p}\n\n" + markdown_table(pd.read_csv(f)))
    return "\n".join(out)


def demo_table(root: Path) -> str:
    from monai_uda.benchmarks.runner import markdown_table

    f = root / "demo" / "results.csv"
    return markdown_table(pd.read_csv(f)) if f.is_file() else "(no docs/benchmarks/demo/results.csv)\n"


def document(root: str = "docs/benchmarks") -> str:
    """The whole docs/benchmarks/README.md."""
    r = Path(root)
    main_df = load(r)
    df, reruns = with_reruns(main_df, r)
    pairs = [p for p in PAIRS if (df.pair == p).any()]
    parts = [
        HEADER,
        "## Target-test Dice, every method and pair\n",
        dice_tables(df, reruns, pairs) + "\n",
        NOISE,
        noise_table(main_df, reruns, pairs) + "\n",
        RUN_CONDITIONS,
        "## Per method family\n",
        family_tables(df, pairs).lstrip("\n") + "\n",
        pair_tables(r, pairs),
        DEMO,
        demo_table(r),
        SPEED,
        ANALYSIS.rstrip("\n"),
    ]
    return "\n".join(parts) + "\n"


def main(root: str = "docs/benchmarks", write: str | None = None) -> None:
    if write is None:
        print(tables(root))
        return
    text = document(root)
    Path(write).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(write) + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(write)
    print(f"wrote {write} ({len(text.splitlines())} lines)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", nargs="?", default="docs/benchmarks", help="folder holding <pair>/results.csv")
    ap.add_argument("--write", metavar="PATH", default=None,
                    help="write the whole benchmark page (header, tables, analysis) to PATH instead of printing")
    a = ap.parse_args()
    main(a.root, a.write)
