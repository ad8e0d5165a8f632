"""Why does the shallow-to-deep Prediction Enhancer (PE) make the A1 target forest worse? Diagnosis on the
finished benchmark's own artifacts (results/v2/A1/seed{k}/s2d_common: source forests, target forest, enhancer),
made with the former 100-tree target forest (before commit 491282e; the script refuses a run with another count),
with the package's own functions (``loaded_items``, ``ForestEnhancerNet``, ``predict_foreground``,
``scribble_items``, ``train_scribble_forest``); nothing is retrained except the extra forests of E1b/E3.

Experiments, per seed (the PE and forests of that seed):

- E0 reproduction: ``ForestEnhancerNet(target forest [+ PE])`` on every target_test image exactly as the benchmark
  evaluates ``rf``/``enhancer`` (whole image, forest prob -> PE, prediction = argmax of log([1-p, p]), i.e. p > 0.5);
  the per-image Dice must equal results/v2/A1/per_image.csv.
- E1 in-domain: the PE fed source-forest maps of the held-out source_validation images (Dice vs source labels):
  ``src_single``: K randomly drawn single source forests per image (10 trees each: what the PE was trained on,
  ``RandForestProbabilityd`` draws ONE forest per sample); ``src_avg``: the mean map of N source forests (a smooth,
  ensemble-like input); ``src_scribble``: a 100-tree forest trained, like the target forest, on simulated
  brushstrokes (benchmark budget) on 4 source_training images (the scribble-forest input type, in-domain).
- E2 input distribution: every row carries statistics of the PE input map (mean p, fraction p > 0.5, true foreground
  fraction, mean binary entropy in bits, pixel AUC, mean p on true foreground / background, distinct values) and
  of the PE output; ``target_x1_10trees``: the benchmark's brushstrokes with a 10-tree forest (the source forests'
  size), to test the 10- vs 100-tree input mismatch.
- E3 input quality on target_test: target forests retrained with denser simulated brushstrokes
  (``target_x4``/``target_x16``: 4x/16x the strokes per class on the same 4 oracle_training images) and on dense
  labels (``target_dense``: all 8 oracle_training images, a uniform random sample of ``--dense-pixels`` labelled
  pixels, true class prior; ``target_dense_bal``: a class-balanced sample of the same size, like the source
  forests), each fed to the same PE. ``target_x1`` is the benchmark's own target forest file.

Target labels are read only to score (target_test) and to simulate strokes / sample dense labels (oracle_training).
One torch thread, forests with n_jobs=1. Writes ``<out>/results.csv`` (one row per seed, experiment, variant,
image[, forest]) and ``<out>/README.md`` (mean +- std over seeds of the per-seed image means; timings).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/s2d_diagnosis.py \\
        --run results/v2/A1 --seeds 0 1 2 --out docs/benchmarks/s2d_diagnosis --scratch results/s2d_diagnosis_scratch
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pandas as pd
import torch

torch.set_num_threads(1)

from monai_uda.data import UDAData  # noqa: E402
from monai_uda.methods.shallow2deep.forests import (  # noqa: E402
    load_forests, predict_foreground, save_forests, train_scribble_forest)
from monai_uda.methods.shallow2deep.workflow import ForestEnhancerNet, loaded_items, scribble_items  # noqa: E402
from monai_uda.networks import UDAUNet  # noqa: E402
from monai_uda.utils import atomic_write_text  # noqa: E402

TIMES: dict[str, float] = {}


class Timer:
    def __init__(self, name):
        self.name = name

    def __enter__(self):
        self.c, self.w = time.process_time(), time.perf_counter()

    def __exit__(self, *a):
        c, w = time.process_time() - self.c, time.perf_counter() - self.w
        TIMES[self.name] = TIMES.get(self.name, 0.0) + c
        print(f"[time] {self.name}: cpu {c:.1f} s, wall {w:.1f} s", flush=True)


def np_(x):
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    p, g = pred.astype(bool), gt.astype(bool)
    den = p.sum() + g.sum()
    return float(2.0 * (p & g).sum() / den) if den else float("nan")


def auc(p: np.ndarray, gt: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    g = gt.ravel().astype(bool)
    return float(roc_auc_score(g, p.ravel())) if 0 < g.sum() < g.size else float("nan")


def benchmark_prediction(net: ForestEnhancerNet, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The evaluation of ``rf``/``enhancer``: ``net(x)`` -> softmax -> argmax (evaluate.json postprocessing);
    returns (binary prediction, foreground probability), spatial shape."""
    with torch.no_grad():
        prob = torch.softmax(net(x), 1)
    return np_(prob.argmax(1)[0]).astype(np.uint8), np_(prob[0, 1])


def enhance(net: ForestEnhancerNet, p: np.ndarray):
    """``benchmark_prediction`` with the forest probability map ``p`` ((1, *S)) given instead of computed: the
    net's own ``forest_probability`` is shadowed for this call, so the PE path (padding, tagging, softmax) is the
    package's."""
    t = torch.as_tensor(np.asarray(p, dtype=np.float32))[None]
    net.forest_probability = lambda x: t
    try:
        return benchmark_prediction(net, t)
    finally:
        del net.forest_probability


def map_stats(p: np.ndarray, gt: np.ndarray) -> dict:
    p = np.asarray(p, dtype=np.float64).ravel()
    g = gt.ravel().astype(bool)
    q = np.clip(p, 1e-12, 1 - 1e-12)
    ent = -(q * np.log2(q) + (1 - q) * np.log2(1 - q))
    ent[(p <= 0) | (p >= 1)] = 0.0
    return {
        "in_mean_p": float(p.mean()), "in_frac_p05": float((p > 0.5).mean()), "true_fg": float(g.mean()),
        "in_entropy": float(ent.mean()), "in_auc": auc(p, g),
        "in_mean_p_fg": float(p[g].mean()) if g.any() else float("nan"),
        "in_mean_p_bg": float(p[~g].mean()) if (~g).any() else float("nan"),
        "in_distinct": int(np.unique(np.round(p, 6)).size),
    }


def row_for(p, gt, net, **keys) -> dict:
    """Forest map p -> forest Dice (p > 0.5, the benchmark's argmax), PE output -> PE Dice, and map statistics."""
    gt = np.asarray(gt)[0] > 0
    forest_pred = (np.asarray(p)[0] > 0.5)  # argmax of [1-p, p]: ties go to background, as in the evaluation
    pe_pred, pe_prob = enhance(net, p)
    return {**keys, "forest_dice": dice(forest_pred, gt), "pe_dice": dice(pe_pred, gt),
            "pe_frac_fg": float(pe_pred.mean()), "pe_mean_p": float(pe_prob.mean()), **map_stats(p, gt)}


def name_of(item) -> str:
    return os.path.basename(str(item["image"])).split(".")[0]


def dense_scribbles(labels, n_pixels: int, balanced: bool, seed: int):
    """Dense labels written as scribble maps (1 = bg, 2 = fg) on a random pixel sample of all images together,
    so that ``train_scribble_forest`` fits them (uniform sample: true prior; balanced: half per class)."""
    rng = np.random.default_rng(seed)
    flat = np.concatenate([np.asarray(lab).ravel() > 0 for lab in labels])
    if balanced:
        idx = np.concatenate([rng.choice(np.flatnonzero(flat == c), n_pixels // 2, replace=False) for c in (0, 1)])
    else:
        idx = rng.choice(flat.size, n_pixels, replace=False)
    scr = np.zeros(flat.size, np.uint8)
    scr[idx] = flat[idx].astype(np.uint8) + 1
    out, start = [], 0
    for lab in labels:
        n = np.asarray(lab).size
        out.append(scr[start:start + n].reshape(np.asarray(lab).shape))
        start += n
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="results/v2/A1")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="docs/benchmarks/s2d_diagnosis")
    ap.add_argument("--scratch", default="results/s2d_diagnosis_scratch")
    ap.add_argument("--k-single", type=int, default=8, help="E1: single source forests drawn per source image")
    ap.add_argument("--n-avg", type=int, default=100, help="E1: source forests averaged for src_avg")
    ap.add_argument("--dense-pixels", type=int, default=40000, help="E3: labelled pixels of the dense forests")
    ap.add_argument("--variants", nargs="+",
                    default=["target_x1_10trees", "target_x4", "target_x16", "target_dense", "target_dense_bal"])
    ap.add_argument("--readme-only", action="store_true",
                    help="rebuild <out>/README.md from <out>/results.csv (and its CPU-seconds lines) without running")
    args = ap.parse_args()
    if args.readme_only:
        readme = os.path.join(args.out, "README.md")
        old = open(readme).read().splitlines() if os.path.isfile(readme) else []
        for line in old[old.index("CPU seconds per step (process time):") + 2:] if old.count(
                "CPU seconds per step (process time):") else []:
            if not line.startswith("- "):
                break
            name, secs = line[2:].rsplit(": ", 1)
            TIMES[name] = float(secs)
        for line in old:  # the command as it was run (--run, --seeds, --k-single, --n-avg, --scratch...)
            if line.strip().startswith("OMP_NUM_THREADS=") and "s2d_diagnosis.py" in line:
                ran = ap.parse_args(line.split("s2d_diagnosis.py", 1)[1].split())
                ran.out, ran.readme_only = args.out, True
                args = ran
        write_readme(pd.read_csv(os.path.join(args.out, "results.csv")), args)
        print(f"rebuilt {readme} from {os.path.join(args.out, 'results.csv')}")
        return
    os.makedirs(args.out, exist_ok=True)
    os.makedirs(args.scratch, exist_ok=True)
    t_all = time.process_time()
    dl = os.path.join(args.run, os.path.basename(os.path.normpath(args.run)) + ".json")
    uda = UDAData(dl)
    bench = pd.read_csv(os.path.join(args.run, "per_image.csv"))
    bench["image"] = bench["name"].map(lambda s: os.path.basename(str(s)).split(".")[0])

    with Timer("load images + features"):
        data = {}
        for key in ("source_validation", "target_test", "oracle_training"):
            items = uda.split(key)
            loaded = loaded_items(uda, key, ("image", "label"), progress=False)
            data[key] = [{"name": name_of(it), "image": d["image"], "label": np_(d["label"])}
                         for it, d in zip(items, loaded)]
        feats = None  # every forest file stores the same PixelFeatures config; computed once below
        _, feats = load_forests(os.path.join(args.run, f"seed{args.seeds[0]}", "s2d_common", "target_forest.joblib"))
        for key in ("source_validation", "target_test", "oracle_training"):
            for d in data[key]:
                d["features"] = feats(np_(d["image"]))

    rows = []
    for seed in args.seeds:
        common = os.path.join(args.run, f"seed{seed}", "s2d_common")
        facts = json.load(open(os.path.join(common, "facts.json")))
        if facts.get("target_forest_trees", 100) != 100:  # its experiments and README compare against 100 trees
            raise SystemExit(f"{common}: target forest of {facts['target_forest_trees']} trees; this diagnosis "
                             "documents the run with the former 100-tree target forest (before commit 491282e)")
        tf_path = os.path.join(common, "target_forest.joblib")
        enh_path = os.path.join(common, "enhancer.pt")
        net = ForestEnhancerNet(tf_path, UDAUNet(spatial_dims=2, in_channels=1, out_channels=2), enh_path).eval()
        rf_net = ForestEnhancerNet(tf_path).eval()
        # the benchmark evaluates s2d_enhancer/model.pt (= ForestEnhancerNet state dict): same weights?
        sd = torch.load(os.path.join(args.run, f"seed{seed}", "s2d_enhancer", "model.pt"), map_location="cpu",
                        weights_only=True)
        same = all(torch.equal(v, sd[k]) for k, v in net.state_dict().items()) and set(sd) == set(net.state_dict())
        print(f"seed {seed}: s2d_enhancer/model.pt == enhancer.pt weights: {same}", flush=True)

        # ---- E0: exact benchmark path on target_test (and the target forest map for E2)
        with Timer(f"seed{seed} E0 reproduction"):
            tmaps = {}
            for d in data["target_test"]:
                x = torch.as_tensor(np_(d["image"]))[None]
                gt = d["label"][0] > 0
                pe_pred, _ = benchmark_prediction(net, x)
                rf_pred, rf_p = benchmark_prediction(rf_net, x)
                ref = bench[(bench.seed == seed) & (bench.image == d["name"])].set_index("method")["dice"]
                rows.append({"seed": seed, "experiment": "E0", "variant": "benchmark_path", "split": "target_test",
                             "image": d["name"], "forest_dice": dice(rf_pred, gt), "pe_dice": dice(pe_pred, gt),
                             "bench_rf_dice": ref.get("rf"), "bench_enhancer_dice": ref.get("enhancer"),
                             "bench_source_dice": ref.get("source"), "bench_s2d_dice": ref.get("s2d")})
                tmaps[d["name"]] = predict_foreground(net.forest, d["features"])

        # ---- E2 (target side): the benchmark's target forest map, PE through the shadowed-probability path
        with Timer(f"seed{seed} E2 target_x1"):
            for d in data["target_test"]:
                rows.append(row_for(tmaps[d["name"]], d["label"], net, seed=seed, experiment="E2",
                                    variant="target_x1", split="target_test", image=d["name"],
                                    forest_trees=len(net.forest.estimators_),
                                    train_pixels=facts.get("scribble_pixels")))

        # ---- E1: in-domain (source_validation)
        with Timer(f"seed{seed} E1 load source forests"):
            src_forests, _ = load_forests(os.path.join(common, "source_forests.joblib"))
        rng = np.random.default_rng(1000 + seed)
        avg_idx = rng.choice(len(src_forests), min(args.n_avg, len(src_forests)), replace=False)
        with Timer(f"seed{seed} E1 src_single + src_avg"):
            for d in data["source_validation"]:
                for k in rng.choice(len(src_forests), args.k_single, replace=False):
                    p = predict_foreground(src_forests[k], d["features"])
                    rows.append(row_for(p, d["label"], net, seed=seed, experiment="E1", variant="src_single",
                                        split="source_validation", image=d["name"], forest_index=int(k),
                                        forest_trees=len(src_forests[k].estimators_),
                                        train_pixels=src_forests[k].s2d_patch_["n_train"]))
                p = np.mean([predict_foreground(src_forests[k], d["features"]) for k in avg_idx], axis=0)
                rows.append(row_for(p, d["label"], net, seed=seed, experiment="E1", variant=f"src_avg{len(avg_idx)}",
                                    split="source_validation", image=d["name"],
                                    forest_trees=sum(len(src_forests[k].estimators_) for k in avg_idx)))
        del src_forests
        # ---- E4 probe: the true label itself as the PE input (a perfect, binary "forest" map)
        with Timer(f"seed{seed} E4 label_as_input"):
            for key in ("source_validation", "target_test"):
                for d in data[key]:
                    rows.append(row_for((d["label"] > 0).astype(np.float32), d["label"], net, seed=seed,
                                        experiment="E4", variant="label_as_input", split=key, image=d["name"]))
        with Timer(f"seed{seed} E1 src_scribble"):
            items, info = scribble_items(uda, None, "source_training", 4, 3, 40, 1, None, seed, progress=False)
            forest = train_scribble_forest([it["image"] for it in items], [it["scribble"] for it in items],
                                           features=feats, n_estimators=100, seed=seed, n_jobs=1)
            for d in data["source_validation"]:
                rows.append(row_for(predict_foreground(forest, d["features"]), d["label"], net, seed=seed,
                                    experiment="E1", variant="src_scribble", split="source_validation",
                                    image=d["name"], forest_trees=100, train_pixels=info["scribble_pixels"]))

        # ---- E5: the benchmark's source and pseudo-label (s2d) networks, evaluated like the benchmark
        with Timer(f"seed{seed} E5 source + s2d nets"):
            from monai.inferers import SlidingWindowInferer

            inferer = SlidingWindowInferer(roi_size=[128, 128], sw_batch_size=4, overlap=0.25)
            for method in ("source", "s2d"):
                unet = UDAUNet(spatial_dims=2, in_channels=1, out_channels=2)
                unet.load_state_dict(torch.load(os.path.join(args.run, f"seed{seed}", method, "model.pt"),
                                                map_location="cpu", weights_only=True))
                unet.eval()
                for key in ("source_validation", "target_test"):
                    for d in data[key]:
                        with torch.no_grad():
                            pred = np_(inferer(torch.as_tensor(np_(d["image"]))[None], unet).argmax(1)[0])
                        ref = bench[(bench.seed == seed) & (bench.image == d["name"]) & (bench.method == method)]
                        rows.append({"seed": seed, "experiment": "E5", "variant": f"{method}_net", "split": key,
                                     "image": d["name"], "pe_dice": dice(pred, d["label"][0] > 0),
                                     "pe_frac_fg": float(pred.mean()), "true_fg": float((d["label"] > 0).mean()),
                                     "bench_dice": float(ref.dice.iloc[0]) if key == "target_test" else None})

        # ---- E2/E3: retrained target forests, same PE, target_test
        for variant in args.variants:
            with Timer(f"seed{seed} {variant}"):
                trees = 10 if variant.endswith("10trees") else 100
                if variant.startswith("target_dense"):
                    labs = [d["label"][0] for d in data["oracle_training"]]
                    scr = dense_scribbles(labs, args.dense_pixels, variant.endswith("bal"), seed)
                    forest = train_scribble_forest(None, [s[None] for s in scr], features=feats, n_estimators=trees,
                                                   seed=seed, n_jobs=1,
                                                   precomputed_features=[d["features"] for d in data["oracle_training"]])
                    n_train = int(sum((s > 0).sum() for s in scr))
                else:
                    mult = {"target_x1_10trees": 1, "target_x4": 4, "target_x16": 16}[variant]
                    items, info = scribble_items(uda, None, "oracle_training", 4, 3 * mult, 40, 1, None, seed,
                                                 progress=False)
                    forest = train_scribble_forest([it["image"] for it in items], [it["scribble"] for it in items],
                                                   features=feats, n_estimators=trees, seed=seed, n_jobs=1)
                    n_train = info["scribble_pixels"]
                save_forests(os.path.join(args.scratch, f"seed{seed}_{variant}.joblib"), forest, feats)
                for d in data["target_test"]:
                    rows.append(row_for(predict_foreground(forest, d["features"]), d["label"], net, seed=seed,
                                        experiment="E2" if variant.endswith("10trees") else "E3", variant=variant,
                                        split="target_test", image=d["name"], forest_trees=trees,
                                        train_pixels=n_train))
        atomic_write_text(os.path.join(args.out, "results.csv"), pd.DataFrame(rows).to_csv(index=False))  # per seed

    df = pd.DataFrame(rows)
    atomic_write_text(os.path.join(args.out, "results.csv"), df.to_csv(index=False))
    TIMES["total"] = time.process_time() - t_all
    write_readme(df, args)
    print(f"[time] total cpu {TIMES['total']:.0f} s", flush=True)


def _ms(v: pd.Series, nd: int = 3) -> str:
    v = v.dropna()
    if v.empty:
        return ""
    return f"{v.mean():.{nd}f} ± {v.std(ddof=0):.{nd}f}" if len(v) > 1 else f"{v.mean():.{nd}f}"  # population std


def _n(v) -> str:
    return f"{v:.0f}" if pd.notna(v) else ""


def write_readme(df: pd.DataFrame, args):
    from scipy.stats import wilcoxon

    e0 = df[df.experiment == "E0"]
    rep_rf = (e0.forest_dice - e0.bench_rf_dice).abs().max()
    rep_pe = (e0.pe_dice - e0.bench_enhancer_dice).abs().max()
    e5 = df[(df.experiment == "E5") & (df.split == "target_test")]
    rep_nets = (e5.pe_dice - e5.bench_dice).abs().max() if len(e5) else float("nan")
    src = e0.set_index(["seed", "image"])["bench_source_dice"]
    d = df[df.experiment != "E0"]
    cols = ["forest_dice", "pe_dice", "in_auc", "in_mean_p", "in_frac_p05", "true_fg", "pe_frac_fg", "in_entropy",
            "in_mean_p_fg", "in_mean_p_bg", "in_distinct", "train_pixels"]
    per_seed = d.groupby(["experiment", "variant", "split", "seed"])[cols].mean()
    per_seed["delta"] = per_seed["pe_dice"] - per_seed["forest_dice"]
    order = ["src_single", f"src_avg{args.n_avg}", "src_scribble", "target_x1", "target_x1_10trees", "target_x4",
             "target_x16", "target_dense", "target_dense_bal", "label_as_input", "source_net", "s2d_net"]
    lines = [
        "# Shallow-to-deep on A1: why the Prediction Enhancer does not help",
        "",
        "Made by `scripts/s2d_diagnosis.py` (its docstring says what each experiment measures) on the finished "
        f"benchmark's artifacts in `{args.run}` (seeds {' '.join(map(str, args.seeds))}); CPU, one torch thread.",
        "",
        "Made on the A1 v2 run with the former 100-tree target forest (before commit 491282e, which set the target "
        "forest to 10 trees because of this diagnosis); the A1 rows have since been rerun on 10 trees "
        "(`docs/benchmarks/v2/A1/`).",
        "",
        "    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python scripts/s2d_diagnosis.py --run " + args.run + " --seeds "
        + " ".join(map(str, args.seeds)) + f" --out {args.out} --scratch {args.scratch}",
        "",
        f"E0 reproduction (the benchmark's evaluation path re-run here vs `per_image.csv`, 30 target_test images): "
        f"max |ΔDice| rf {rep_rf:.2e}, enhancer {rep_pe:.2e}; E5 source/s2d nets {rep_nets:.2e}.",
        "",
        "Mean ± std over seeds of the per-seed mean over images (E1 `src_single`: over images x "
        f"{args.k_single} forests). forest = the map thresholded at 0.5 (the `rf` evaluation), PE = the enhancer on "
        "that map (the `enhancer` evaluation); AUC, mean p, p>0.5, entropy (bits), p|fg, p|bg describe the PE's "
        "input map; PE fg = foreground fraction of the PE's output. Source model on target_test (benchmark): "
        f"{_ms(e0.groupby('seed').bench_source_dice.mean())}.",
        "",
        "| exp | input map | split | train px | forest Dice | PE Dice | PE − forest | PE vs source (target) | AUC | "
        "mean p | p>0.5 | true fg | PE fg | entropy | p\\|fg | p\\|bg | distinct values |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted(per_seed.index.droplevel("seed").unique(),
                  key=lambda k: (k[0] in ("E4", "E5"), order.index(k[1]) if k[1] in order else 99, k[2]))
    for exp, var, split in keys:
        g = per_seed.loc[(exp, var, split)]
        vs = ""
        if split == "target_test":
            r = d[(d.variant == var)].set_index(["seed", "image"])["pe_dice"]
            s = src.reindex(r.index)
            diff = (r - s).dropna()
            if len(diff) >= 5 and (diff.abs() > 1e-6).any():
                p = wilcoxon(diff).pvalue
                vs = f"{diff.mean():+.3f} (p {p:.2g}, n {len(diff)})"
        lines.append(
            f"| {exp} | `{var}` | {split} | {_n(g.train_pixels.mean())} | {_ms(g.forest_dice)} | {_ms(g.pe_dice)} | "
            f"{_ms(g.delta)} | {vs} | {_ms(g.in_auc)} | {_ms(g.in_mean_p)} | {_ms(g.in_frac_p05)} | "
            f"{_ms(g.true_fg)} | {_ms(g.pe_frac_fg)} | {_ms(g.in_entropy)} | {_ms(g.in_mean_p_fg)} | "
            f"{_ms(g.in_mean_p_bg)} | {_n(g.in_distinct.mean())} |")
    lines += ["", "E5 rows: `forest` columns empty; `PE Dice` = the network's Dice, `PE fg` = its foreground fraction.",
              "", "Paired comparisons (per-image Dice, paired over (seed, image), two-sided Wilcoxon signed-rank):", "",
              "| comparison | mean difference | p | n |", "|---|---|---|---|"]
    tgt = df[df.split == "target_test"].set_index(["seed", "image"])

    def col(variant, c):
        return tgt[tgt.variant == variant][c]

    pairs = [
        ("`target_x1`: PE − forest (the `enhancer` vs `rf` verdict)", col("target_x1", "pe_dice"), col("target_x1", "forest_dice")),
        ("`target_x1_10trees`: PE − forest", col("target_x1_10trees", "pe_dice"), col("target_x1_10trees", "forest_dice")),
        ("PE on `target_x1_10trees` − PE on `target_x1` (same strokes, 10 vs 100 trees)", col("target_x1_10trees", "pe_dice"), col("target_x1", "pe_dice")),
        ("PE fg fraction: `target_x1_10trees` − `target_x1`", col("target_x1_10trees", "pe_frac_fg"), col("target_x1", "pe_frac_fg")),
        ("PE on `target_x4` − PE on `target_x1`", col("target_x4", "pe_dice"), col("target_x1", "pe_dice")),
        ("PE on `target_x16` − PE on `target_x1`", col("target_x16", "pe_dice"), col("target_x1", "pe_dice")),
        ("forest `target_x16` − forest `target_x1`", col("target_x16", "forest_dice"), col("target_x1", "forest_dice")),
        ("`target_dense`: PE − forest", col("target_dense", "pe_dice"), col("target_dense", "forest_dice")),
        ("`target_dense_bal`: PE − forest", col("target_dense_bal", "pe_dice"), col("target_dense_bal", "forest_dice")),
        ("PE on `target_dense` − PE on `target_dense_bal` (true vs balanced prior)", col("target_dense", "pe_dice"), col("target_dense_bal", "pe_dice")),
        ("s2d net − PE on `target_x1` (the `s2d` vs `enhancer` verdict)", col("s2d_net", "pe_dice"), col("target_x1", "pe_dice")),
        ("s2d net fg fraction − PE fg fraction on `target_x1`", col("s2d_net", "pe_frac_fg"), col("target_x1", "pe_frac_fg")),
    ]
    for name, a, b in pairs:
        diff = (a - b.reindex(a.index)).dropna()
        if len(diff) >= 5 and (diff != 0).any():
            lines.append(f"| {name} | {diff.mean():+.3f} | {wilcoxon(diff).pvalue:.2g} | {len(diff)} |")
    lines += ["", "Per seed on target_test (image means): the benchmark's target forest, its PE output and the s2d net.", "",
              "| seed | forest Dice | PE Dice | PE fg | input entropy | input p\\|bg | s2d Dice | s2d fg | source Dice | source fg | true fg |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for seed, g in tgt.reset_index().groupby("seed"):
        x1, s2, so = g[g.variant == "target_x1"], g[g.variant == "s2d_net"], g[g.variant == "source_net"]
        lines.append(f"| {seed} | {x1.forest_dice.mean():.3f} | {x1.pe_dice.mean():.3f} | {x1.pe_frac_fg.mean():.3f} | "
                     f"{x1.in_entropy.mean():.3f} | {x1.in_mean_p_bg.mean():.3f} | {s2.pe_dice.mean():.3f} | "
                     f"{s2.pe_frac_fg.mean():.3f} | {so.pe_dice.mean():.3f} | {so.pe_frac_fg.mean():.3f} | "
                     f"{x1.true_fg.mean():.3f} |")
    lines += ["", "CPU seconds per step (process time):", ""]
    lines += [f"- {k}: {v:.0f}" for k, v in TIMES.items()]
    lines += ["", "Per (seed, experiment, variant, image[, forest]) rows: `results.csv`."]
    atomic_write_text(os.path.join(args.out, "README.md"), "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
