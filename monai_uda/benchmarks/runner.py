"""``monai-uda benchmark``: every method on one domain pair, same network, budget and seeds.

For each seed the source-only model is trained once and shared by the adaptation methods; each
method's checkpoint is evaluated on ``target_test`` with the source bundle's ``evaluate.json``
(Dice, IoU, F1, surface Dice, HD95). Outputs in ``--out``: ``results.csv`` (one row per method and
seed, with its wall and CPU seconds including evaluation, thread count and machine),
``per_image.csv`` (every test image's metrics per method and seed, so anyone can recompute),
``results.md`` (mean ± std over seeds, the gap closed = (method - source) / (oracle - source) on Dice,
and a paired Wilcoxon test against source on per-image Dice: ``+``/``-`` better/worse at p < 0.05,
``=`` no significant difference) and ``results.png`` (a bar chart).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from typing import Any, Sequence

import pandas as pd

from monai_uda.bundle.stages import model_card_path
from monai_uda.evaluation.significance import ALPHA, paired_test
from monai_uda.utils import atomic_write, atomic_write_text, file_hash, folder_lock

from .methods import METHODS, MethodContext, get_method, load_methods, train_source

__all__ = ["BUDGETS", "budget_for", "run_benchmark", "gap_closed", "markdown_table", "plot_results", "combined_table"]

logger = logging.getLogger(__name__)

#: overrides per mode: ``quick`` and ``demo`` cut every training to ``epoch_length`` x ``max_epochs`` iterations
#: (tests and the demo); ``full`` leaves the budgets to the bundle configs
BUDGETS: dict[str, dict[int, dict[str, Any]]] = {
    "quick": {
        2: {"max_epochs": 2, "epoch_length": 4, "batch_size": 2, "num_samples": 2, "roi_size": [64, 64],
            "data_limit": 6, "validate_during_training": False},
        3: {"max_epochs": 2, "epoch_length": 2, "batch_size": 1, "num_samples": 2, "roi_size": [32, 32, 32],
            "data_limit": 2, "validate_during_training": False},
    },
    "demo": {
        2: {"max_epochs": 8, "epoch_length": 10, "batch_size": 4, "num_samples": 2, "roi_size": [64, 64],
            "data_limit": None, "validate_during_training": False},
        3: {"max_epochs": 6, "epoch_length": 10, "batch_size": 1, "num_samples": 2, "roi_size": [48, 48, 48],
            "data_limit": None, "validate_during_training": False},
    },
    # full: the data shape only; how long each model trains (epochs, iterations, rounds, learning rates,
    # early stopping) is its bundle config's, one source of truth (docs/benchmarks/protocol.md)
    "full": {
        2: {"batch_size": 4, "num_samples": 2, "roi_size": [128, 128], "data_limit": None},
        # 48^3 crops cover most of a D1 volume (76 x 91 x 75 at 2 mm)
        3: {"batch_size": 1, "num_samples": 2, "roi_size": [48, 48, 48], "data_limit": None},
    },
}
METRICS = ["dice", "iou", "f1", "surface_dice", "hd95"]


def budget_for(mode: str, spatial_dims: int, roi_size: Sequence[int] | None = None) -> dict[str, Any]:
    """The budget of ``mode`` (``quick``/``full``) for 2D or 3D, optionally with another crop size."""
    b = dict(BUDGETS[mode][spatial_dims])
    if roi_size is not None:
        b["roi_size"] = list(roi_size)
    return b


def gap_closed(method: float, source: float, oracle: float) -> float:
    """(method - source) / (oracle - source); NaN when the oracle is not better than the source."""
    denom = oracle - source
    return float("nan") if denom <= 1e-8 else (method - source) / denom


def _evaluate(ctx: MethodContext, out, subdir: str) -> tuple[dict[str, float], pd.DataFrame]:
    from monai_uda.bundle import bundle_dir, run_bundle

    ov = ctx.bundle_overrides(subdir)
    # a user override of a nested item the evaluation configs do not have (e.g. bn:target_dataset#data) is
    # the method's, not the evaluation's: MONAI would refuse the missing parent
    top = set()
    for name in ("train.json", "evaluate.json"):
        with open(bundle_dir(out.bundle) / "configs" / name) as fh:
            top |= set(json.load(fh))
    for key in [k for k in ctx.overrides if "#" in k and k.split("#", 1)[0] not in top]:
        ov.pop(key, None)
    ov.update(out.eval_overrides)
    ov["checkpoint"] = out.checkpoint
    ov["eval_dir"] = eval_dir = os.path.join(ctx.workdir, subdir, "target_test")
    ov["data_limit"] = None  # always the whole target test set
    ov["progress"] = False
    wf = run_bundle(out.bundle, ["train.json", "evaluate.json"], **ov)
    metrics = dict(wf.parser.get_parsed_content("validate#evaluator").state.metrics)
    per_image = pd.read_csv(os.path.join(eval_dir, "metrics_per_case.csv"))
    return {k: float(metrics[k]) for k in METRICS if k in metrics}, per_image


def machine() -> dict[str, Any]:
    """What produced a row: platform, CPU model and the instruction set torch's kernels use, core count, torch,
    MONAI and NumPy versions, intra-op threads and the code (:func:`code_version`). A training is deterministic per
    seed and thread count on one machine; the CPU and the library versions say whether two rows could be equal."""
    import monai
    import numpy
    import torch

    return {"threads": torch.get_num_threads(), "cores": os.cpu_count(), "torch": torch.__version__,
            "monai": monai.__version__, "numpy": numpy.__version__, "platform": platform.platform(),
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(), "code": code_version()}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` says of the processor."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_CODE: list[str] = []


def code_version() -> str:
    """The monai_uda code a row was made with: the git commit of its checkout (``-dirty`` when tracked files of
    the package, the bundles or the manifests differ from it; docs do not count), else the package version.
    Read once per process."""
    if not _CODE:
        import subprocess

        import monai_uda

        root = os.path.dirname(os.path.dirname(os.path.abspath(monai_uda.__file__)))
        version = f"monai_uda {getattr(monai_uda, '__version__', '?')}"
        try:
            commit = subprocess.run(["git", "-C", root, "rev-parse", "--short=10", "HEAD"], capture_output=True,
                                    text=True, timeout=10)
            dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--",
                                    "monai_uda", "bundles", "data_manifests"], capture_output=True, text=True, timeout=10)
            if commit.returncode == 0 and commit.stdout.strip():
                version = commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
        _CODE.append(version)
    return _CODE[0]


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (data-loader workers, isolated ranks)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def run_benchmark(
    datalist: str,
    methods: Sequence[str],
    out: str,
    mode: str = "quick",
    seeds: Sequence[int] = (0,),
    device: str = "cpu",
    amp: bool = False,
    roi_size: Sequence[int] | None = None,
    progress: bool = True,
    resume: bool = False,
    overrides: dict[str, dict[str, Any]] | None = None,
    verbose: bool = False,
    source_from: str | None = None,
) -> pd.DataFrame:
    """Run ``methods`` on the pair described by ``datalist`` and write the results to ``out``.

    With ``resume``, (method, seed) rows already in ``out/results.csv`` (or the partial file of an
    interrupted run, kept in ``out/.partial/``) are kept instead of re-run, and a finished source model of a seed is reused,
    so adding a method to a finished benchmark only runs that method.

    Output: one progress bar (``progress``) and one line per finished (method, seed) row; ``verbose`` adds
    every bundle run's own progress bars.

    ``overrides`` maps a method name to config overrides of its bundle runs (``{"bn": {"mode": "ema"}}``);
    they are applied last, over the budget (``"source"`` also changes the shared source model).

    ``source_from`` is another benchmark folder of the same pair: each seed reuses its source model
    (``<source_from>/seed<k>/source/model.pt``) instead of training one, so a run that changes one method's
    budget is paired with the earlier run's rows (same source model, same seed).

    Returns:
        the per-(method, seed) results table (also written as ``results.csv``).

    Raises:
        FolderLockedError: another run is writing ``out``.
    """
    from monai_uda.data import UDAData

    load_methods()
    overrides = {k: dict(v) for k, v in (overrides or {}).items()}
    unknown = [m for m in list(methods) + list(overrides) if m not in METHODS]
    if unknown:
        raise KeyError(f"unknown method(s) {unknown}; available: {sorted(METHODS)}")
    if source_from is not None:
        if "source" in overrides:
            raise ValueError("--override source:... has no effect with --source-from (the source models are reused)")
        missing = [p for p in (source_model_path(source_from, s) for s in seeds)
                   if not os.path.isfile(model_card_path(p))]
        if missing:
            raise FileNotFoundError(f"--source-from {source_from}: no finished source model {missing[0]} (its card "
                                    "is written when training ends; run the benchmark there first, with the same "
                                    "seeds)")
    uda = UDAData(datalist)  # validate once, deeply, before any training
    with folder_lock(out):  # a second run into the same folder is refused, not raced
        return _run(uda, datalist, methods, out, mode, seeds, device, amp, roi_size, progress, resume, overrides,
                    verbose, source_from)


def _source_used(cache: dict[str, str]) -> dict[str, str]:
    """``source_sha256``: the first 16 hex digits of the source model file a row's method started from (none when it
    used none). A source model trained again on another machine (other CPU kernels or library versions) differs from
    the first, so rows of one seed made on two machines can rest on two source models: this column says which."""
    if not cache.get("used") or not os.path.isfile(cache.get("source", "")):
        return {}
    return {"source_sha256": file_hash(cache["source"])[:16]}


def source_model_path(out: str, seed: int) -> str:
    """Where a benchmark folder keeps the source model of ``seed``."""
    return os.path.join(out, f"seed{seed}", "source", "model.pt")


#: rows finished so far by an unfinished run (what ``--resume`` continues from); hidden: not a result
PARTIAL_DIR = ".partial"

#: the files of a benchmark folder that hold finished rows, in the order ``--resume`` reads them (a later file wins a
#: clash): the tables, the partial tables of earlier versions, and those of a run that stopped
RESULT_FILES = ("results.csv", "results.partial.csv", os.path.join(PARTIAL_DIR, "results.csv"))
#: their per-image results, in the same order
PER_IMAGE_FILES = ("per_image.csv", "per_image.partial.csv", os.path.join(PARTIAL_DIR, "per_image.csv"))


def _run(uda, datalist, methods, out, mode, seeds, device, amp, roi_size, progress, resume, overrides,
         verbose, source_from=None) -> pd.DataFrame:
    from tqdm.auto import tqdm

    budget = budget_for(mode, uda.spatial_dims, roi_size)
    code_version()  # the code as the run starts (later edits of the checkout do not relabel its rows)
    rows = []
    images: list[pd.DataFrame] = []
    done, done_images = _previous_rows(out) if resume else ({}, None)
    other = sorted({str(r.get("code")) for r in done.values() if r.get("code") not in (None, code_version())
                    and str(r.get("code")) != "nan"})
    if other:
        logger.warning("resuming %s: its finished rows were made with other code (%s) than this run (%s); the "
                       "table mixes them (the code column says which row is which)", out, ", ".join(other),
                       code_version())
    jobs = [(s, m) for s in seeds for m in methods]
    asked = {(m, s) for s, m in jobs}

    def settings(method: str) -> str:  # what a row was made with, beside the code: a resume with other settings
        return json.dumps({"mode": mode, "budget": budget, "overrides": overrides.get(method, {}),  # reruns it
                           "source_overrides": overrides.get("source", {})}, sort_keys=True, default=str)

    changed = {k for k, r in done.items() if k in asked and isinstance(r.get("settings"), str)
               and r["settings"] != settings(k[0])}  # rows made before settings were recorded are kept as they are
    for k in sorted(changed, key=lambda k: (k[1], k[0])):
        logger.warning("resuming %s: %s seed %d was made with other settings (%s), not this run's (%s): run again",
                       out, k[0], k[1], done[k]["settings"], settings(k[0]))
        del done[k]
    bar = tqdm(jobs, desc=f"benchmark {uda.name}", disable=not progress, unit="run")
    for seed in seeds:
        cache: dict[str, str] = {}
        workdir = os.path.join(out, f"seed{seed}")

        def source(ctx_=None, _seed=seed, _workdir=workdir):
            cache["used"] = "yes"  # this method's row records which source model it started from
            finished = source_model_path(out, _seed)
            if "source" not in cache and source_from is not None:
                cache["source"] = source_model_path(source_from, _seed)
            # model.pt is written at each best validation while the source trains: only its card, written when
            # training ends, says the model is finished (an interrupted training is run again, from the start)
            if ("source" not in cache and resume and os.path.isfile(model_card_path(finished))
                    and ("source", _seed) not in changed):
                cache["source"] = finished
            if "source" not in cache:
                kept = sorted(m for m, s in done if s == _seed and m != "oracle")
                if kept:  # a model trained again on another machine is not the one those rows started from
                    logger.warning("resuming %s: seed %d's source model is not here, so it is trained again; rows made "
                                   "now may rest on another source model than its finished rows (%s) if those were "
                                   "made on another machine (source_sha256 says which)", out, _seed, ", ".join(kept))
                t = time.time()
                cache["source"] = train_source(MethodContext(datalist, _workdir, _seed, budget, device, amp, verbose,
                                                             overrides=overrides.get("source", {})))
                cache["source_seconds"] = time.time() - t
            return cache["source"]

        for method in methods:
            bar.set_postfix_str(f"{method} seed={seed}")
            if (method, seed) in done:
                rows.append(done[(method, seed)])
                if done_images is not None:
                    images.append(done_images[(done_images.method == method) & (done_images.seed == seed)])
                bar.update(1)
                continue
            ctx = MethodContext(datalist, workdir, seed, budget, device, amp, verbose, _source=source,
                                overrides=overrides.get(method, {}), method_overrides=overrides)
            t, cpu = time.time(), _cpu_seconds()
            cache.pop("used", None)
            res = get_method(method)(ctx)
            seconds = time.time() - t
            if method == "source":
                seconds = cache.get("source_seconds", seconds)
            t_eval = time.time()
            metrics, per_image = _evaluate(ctx, res, f"eval_{method}")
            eval_seconds = time.time() - t_eval
            rows.append({"pair": uda.name, "method": method, "seed": seed, **metrics, "seconds": round(seconds, 1),
                         "eval_seconds": round(eval_seconds, 1), "wall_seconds": round(seconds + eval_seconds, 1),
                         "cpu_seconds": round(_cpu_seconds() - cpu, 1), **machine(), "settings": settings(method),
                         **_source_used(cache), **res.extra})
            images.append(per_image.assign(pair=uda.name, method=method, seed=seed))
            if progress:
                bar.write(f"{uda.name} {method} seed {seed}: Dice {metrics.get('dice', float('nan')):.3f}, "
                          f"{seconds + eval_seconds:.0f} s")
            bar.update(1)
            # the partial files hold every finished row, so a resumed run that stops again loses none
            p_rows, p_images = _with_kept_rows(rows, images, done, done_images, asked) if resume else (rows, images)
            atomic_write_text(os.path.join(out, PARTIAL_DIR, "results.csv"), pd.DataFrame(p_rows).to_csv(index=False))
            atomic_write_text(os.path.join(out, PARTIAL_DIR, "per_image.csv"),
                              pd.concat(p_images, ignore_index=True).to_csv(index=False))
    bar.close()
    if resume:  # finished rows of methods or seeds this run does not ask for stay in the table
        rows, images = _with_kept_rows(rows, images, done, done_images, asked)
    df = pd.DataFrame(rows)
    if "dice" in df:
        df["dice_loss"] = 1.0 - df["dice"]  # the "Dice loss" column of the BUDA-Seg paper's tables
    df["gap_closed"] = [
        _row_gap(df, r) for _, r in df.iterrows()
    ]
    atomic_write_text(os.path.join(out, "results.csv"), df.to_csv(index=False))
    per_image = _per_image_table(images)
    atomic_write_text(os.path.join(out, "per_image.csv"), per_image.to_csv(index=False))
    table_seeds = sorted({int(s) for s in df.seed}) if resume and "seed" in df else list(seeds)  # kept rows too
    meta = {"mode": mode, "device": device, "amp": amp, "seeds": table_seeds, "budget": budget,
            "datalist": os.path.abspath(datalist), **({"overrides": overrides} if overrides else {}),
            **({"source_from": source_from} if source_from else {})}
    atomic_write_text(os.path.join(out, "results.md"), markdown_table(df, meta, per_image))
    plot_results(df, os.path.join(out, "results.png"), title=f"{uda.name} ({mode}, {device})")
    shutil.rmtree(os.path.join(out, PARTIAL_DIR), ignore_errors=True)
    for name in ("results.partial.csv", "per_image.partial.csv"):  # written by earlier versions
        if os.path.exists(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    return df


def _with_kept_rows(rows: list[dict[str, Any]], images: list[pd.DataFrame], done: dict[tuple[str, int], dict[str, Any]],
                    done_images: pd.DataFrame | None, asked: set[tuple[str, int]]):
    """``rows`` and ``images`` with the earlier run's rows outside ``asked`` added, ordered by seed, then by method
    in the earlier table's order (new methods last), so that resuming with fewer methods never drops a result."""
    kept = [r for k, r in done.items() if k not in asked]
    rows = rows + kept
    if done_images is not None:
        images = images + [done_images[(done_images.method == r["method"]) & (done_images.seed == r["seed"])]
                           for r in kept]
    order = {m: i for i, m in enumerate(dict.fromkeys([m for m, _ in done] + [r["method"] for r in rows]))}
    rows = sorted(rows, key=lambda r: (int(r["seed"]), order[r["method"]]))
    frames = [f for f in images if len(f)]
    if frames:
        df = pd.concat(frames, ignore_index=True)
        rank = df.seed.astype(int) * len(order) + df.method.map(order)
        images = [df.iloc[rank.argsort(kind="stable")].reset_index(drop=True)]
    return rows, images


def _per_image_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=["pair", "method", "seed", "name"])
    df = pd.concat(frames, ignore_index=True)
    first = ["pair", "method", "seed", "name"]
    return df[first + [c for c in df.columns if c not in first]]


def _previous_rows(out: str) -> tuple[dict[tuple[str, int], dict[str, Any]], pd.DataFrame | None]:
    """Finished rows of an earlier run in ``out`` (and their per-image results, when they were kept)."""
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    for name in RESULT_FILES:
        p = os.path.join(out, name)
        if os.path.isfile(p):
            for r in pd.read_csv(p, dtype={"code": str}).to_dict("records"):
                r.pop("gap_closed", None)
                r.pop("dice_loss", None)
                rows[(r["method"], int(r["seed"]))] = r
    frames = [pd.read_csv(os.path.join(out, n))
              for n in PER_IMAGE_FILES
              if os.path.isfile(os.path.join(out, n))]
    images = pd.concat(frames, ignore_index=True).drop_duplicates(["method", "seed", "name"], keep="last") \
        if frames else None
    return rows, images


def _row_gap(df: pd.DataFrame, r) -> float:
    same = df[df.seed == r.seed]
    src, orc = same[same.method == "source"], same[same.method == "oracle"]
    if src.empty or orc.empty or "dice" not in df:
        return float("nan")
    return gap_closed(r.dice, float(src.dice.iloc[0]), float(orc.dice.iloc[0]))


def markdown_table(df: pd.DataFrame, meta: dict[str, Any] | None = None, per_image: pd.DataFrame | None = None) -> str:
    """Mean ± std over seeds per method, as a markdown table.

    With ``per_image`` (the runner's ``per_image.csv``), a column ``vs source`` gives the paired Wilcoxon
    test of each method against source on per-image Dice (:func:`~monai_uda.evaluation.significance.paired_test`):
    ``+``/``-`` significantly better/worse at p < 0.05 with the p-value, ``=`` no significant difference.
    """
    # time: the whole row (method + evaluation) where recorded; older results have the method's seconds only
    time_col = "wall_seconds" if "wall_seconds" in df else "seconds"
    cols = [c for c in METRICS + ["dice_loss", "gap_closed", time_col] if c in df]
    test = per_image is not None and len(per_image) > 0 and "source" in set(per_image.method)
    lines = []
    if meta:
        lines.append(f"pair `{df.pair.iloc[0]}` · mode `{meta['mode']}` · device `{meta['device']}` · "
                     f"seeds {meta['seeds']} · budget {meta['budget']}"
                     + (f" · overrides {meta['overrides']}" if meta.get("overrides") else "")
                     + (f" · source models from `{meta['source_from']}`" if meta.get("source_from") else ""))
        lines.append("")
    lines.append("| method | " + " | ".join(cols) + (" | vs source |" if test else " |"))
    lines.append("|---|" + "---|" * (len(cols) + int(test)))
    for method, g in df.groupby("method", sort=False):
        cells = []
        for c in cols:
            v = g[c].astype(float)
            if c == time_col:
                cells.append(f"{v.mean():.0f}")
            elif len(v) > 1:
                cells.append(f"{v.mean():.3f} ± {v.std(ddof=0):.3f}")
            else:
                cells.append(f"{v.mean():.3f}")
        if test:
            cells.append(_mark(per_image, method))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if test:
        lines += ["", f"vs source: two-sided Wilcoxon signed-rank test on per-image Dice paired over (seed, image), "
                      f"level {ALPHA}: + better, - worse (the sign of the signed-rank statistic, which a few large "
                      f"differences cannot flip as they can the mean's), = no significant difference, ? fewer than 5 "
                      f"pairs."]
    return "\n".join(lines) + "\n"


def _mark(per_image: pd.DataFrame, method: str) -> str:
    if method == "source":
        return "—"
    r = paired_test(per_image, method)
    return r["mark"] if r["mark"] == "?" else f"{r['mark']} (p={r['p']:.2g}, n={r['n']})"


def plot_results(df: pd.DataFrame, path: str, title: str = "") -> str:
    """Bar chart of target-test Dice per method (mean and std over seeds)."""
    # a pyplot-free Figure: no backend switch (Jupyter keeps its inline figures), no global figure list
    from matplotlib.figure import Figure

    g = df.groupby("method", sort=False)["dice"]
    mean, std = g.mean(), g.std(ddof=0).fillna(0)
    fig = Figure(figsize=(1.2 + 0.9 * len(mean), 3.2))
    ax = fig.subplots()
    colors = ["#7f7f7f" if m == "source" else "#2ca02c" if m == "oracle" else "#1f77b4" for m in mean.index]
    ax.bar(mean.index, mean.values, yerr=std.values, color=colors, capsize=3)
    for i, v in enumerate(mean.values):
        ax.text(i, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("target test Dice")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    return path


def combined_table(result_dirs: Sequence[str]) -> str:
    """One markdown table (pair x method, mean over seeds) from several benchmark output folders."""
    frames = [pd.read_csv(os.path.join(d, "results.csv")) for d in result_dirs]
    df = pd.concat(frames, ignore_index=True)
    time_col = "wall_seconds" if "wall_seconds" in df else "seconds"
    cols = [c for c in ["dice", "iou", "surface_dice", "hd95", "dice_loss", "gap_closed", time_col] if c in df]
    lines = ["| pair | method | seeds | " + " | ".join(cols) + " |", "|---|---|---|" + "---|" * len(cols)]
    for (pair, method), g in df.groupby(["pair", "method"], sort=False):
        cells = [f"{g[c].astype(float).mean():.0f}" if c == time_col else f"{g[c].astype(float).mean():.3f}"
                 for c in cols]
        lines.append(f"| {pair} | {method} | {len(g)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
