"""Speed of the shallow-to-deep forest stage on the A1 target (Matskevych et al.).

Prints, on the 20 VNC ssTEM slices (``em_drosophila_vnc_sstem/images``, 512x512):

1. pixel-feature time on one 512x512 image: the scipy path of ``PixelFeatures`` against an equivalent
   torch path (separable ``conv2d`` with the same kernels, defined here only for this comparison);
2. feature time for all 20 slices;
3. target-forest training time from simulated brushstrokes (``labels/mito`` feeds the scribble
   simulator, benchmarks only), with the scribble budget;
4. for reference, prediction time and F1 of that forest on a few slices (labels used for evaluation only).

Falls back to synthetic blob images when the data folder is absent.

Usage::

    python -m monai_uda.benchmarks.s2d_speed --data-root /work/shared/data
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.feature import hessian_matrix_eigvals, structure_tensor_eigenvalues

from monai_uda.methods.shallow2deep.forests import load_single_channel, predict_foreground, train_scribble_forest
from monai_uda.methods.shallow2deep.scribbles import simulate_scribbles
from monai_uda.methods.shallow2deep.pixel_features import PixelFeatures

__all__ = ["torch_pixel_features", "load_a1_target", "main"]

A1_TARGET = "em_drosophila_vnc_sstem"


# ------------------------------------------------------------------ torch variant (comparison only)
def _kernels(sigma: float, truncate: float):
    r = int(truncate * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 * x**2 / sigma**2)
    phi /= phi.sum()
    k = torch.stack([phi, -x / sigma**2 * phi, (x**2 / sigma**4 - 1 / sigma**2) * phi])
    return k.flip(-1).float(), r  # conv correlates: flip to convolve


def _pass(t: torch.Tensor, axis: int, k: torch.Tensor, r: int) -> list[torch.Tensor]:
    nd = t.ndim
    shape = [1] * nd
    shape[axis] = k.shape[-1]
    pad = [0] * (2 * nd)
    pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = r
    conv = F.conv2d if nd == 2 else F.conv3d
    y = conv(F.pad(t[None, None], pad, mode="reflect"), k.reshape(3, 1, *shape))[0]
    return [y[i] for i in range(3)]


@torch.no_grad()
def torch_pixel_features(image: np.ndarray, transform: PixelFeatures) -> np.ndarray:
    """Same features as ``transform`` (default families) with torch convolutions; for timing only."""
    img = torch.as_tensor(image[0], dtype=torch.float32)
    nd = img.ndim
    first = [tuple(int(i == a) for i in range(nd)) for a in range(nd)]
    pairs = list(itertools.combinations_with_replacement(range(nd), 2))
    second = [tuple(int(i == a) + int(i == b) for i in range(nd)) for a, b in pairs]
    fam: dict[str, list] = {f: [] for f in transform.features}
    for s in transform.sigmas:
        k, r = _kernels(s, transform.truncate)
        cache = {(): img}

        def get(p):
            if p not in cache:
                outs = _pass(get(p[:-1]), len(p) - 1, k, r)
                for o in range(3):
                    cache[p[:-1] + (o,)] = outs[o]
            return cache[p]

        fam["gaussian"].append(get((0,) * nd)[None].numpy())
        if s < transform.min_derivative_sigma:
            continue
        d = {o: get(o) for o in first + second}
        fam["log"].append(sum(d[tuple(2 * int(i == a) for i in range(nd))] for a in range(nd))[None].numpy())
        fam["ggm"].append(torch.sqrt(sum(d[o] ** 2 for o in first))[None].numpy())
        fam["hessian"].append(np.asarray(hessian_matrix_eigvals([d[o].numpy() for o in second])))
        kk, rr = _kernels(0.5 * s, transform.truncate)
        elems = []
        for a, b in pairs:
            t = d[first[a]] * d[first[b]]
            for ax in range(nd):
                t = _pass(t, ax, kk, rr)[0]
            elems.append(t.numpy())
        fam["structure"].append(np.asarray(structure_tensor_eigenvalues(elems)))
    return np.concatenate([a for f in transform.features for a in fam[f]], 0)


# ------------------------------------------------------------------ data
def _synthetic(n: int, size: int = 512, seed: int = 0):
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        blobs = ndi.gaussian_filter(rng.random((size, size)), 6) > 0.53
        img = ndi.gaussian_filter(blobs.astype(np.float32) * 60 + 100, 1.5) + rng.normal(0, 15, (size, size))
        images.append(img[None].astype(np.float32))
        labels.append(blobs[None].astype(np.uint8))
    return images, labels


def load_a1_target(data_root: str | Path | None, n_slices: int = 20):
    """``(images, mito_labels, source)`` of the A1 target (VNC), or synthetic stand-ins if absent."""
    root = Path(data_root) / A1_TARGET if data_root else None
    if root is not None and (root / "images").is_dir() and (root / "labels" / "mito").is_dir():
        paths = sorted((root / "images").glob("*.png"))[:n_slices]
        if paths:
            images = [load_single_channel(p, "image").astype(np.float32) for p in paths]
            labels = [load_single_channel(root / "labels" / "mito" / p.name, "label") for p in paths]
            return images, labels, str(root)
    images, labels = _synthetic(n_slices)
    return images, labels, "synthetic (data not found)"


def _timeit(fn, repeats: int) -> tuple[float, float, object]:
    """Mean wall and process-CPU seconds of ``fn`` (after one warm-up call)."""
    out = fn()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - t0) / repeats, (time.process_time() - c0) / repeats, out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--n-slices", type=int, default=20)
    parser.add_argument("--n-strokes", type=int, default=3, help="strokes per class and slice")
    parser.add_argument("--stroke-length", type=int, default=40)
    parser.add_argument("--n-estimators", type=int, default=100)
    parser.add_argument("--n-jobs", type=int, default=-1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-slices", type=int, default=3)
    args = parser.parse_args(argv)

    images, labels, source = load_a1_target(args.data_root, args.n_slices)
    transform = PixelFeatures()
    print(f"A1 target: {source}: {len(images)} slices of {images[0].shape[1:]}")
    print(f"torch threads {torch.get_num_threads()}, joblib n_jobs {args.n_jobs}")
    print(f"features: {transform.num_features(2)} channels, sigmas {transform.sigmas}")

    t_scipy, c_scipy, f_scipy = _timeit(lambda: transform(images[0]), args.repeats)
    t_torch, c_torch, f_torch = _timeit(lambda: torch_pixel_features(images[0], transform), args.repeats)
    scale = np.abs(f_scipy).reshape(len(f_scipy), -1).max(1) + 1e-12  # per-channel magnitude
    rel = float((np.abs(f_scipy - f_torch).reshape(len(f_scipy), -1).max(1) / scale).max())
    print(
        f"[features, one 512x512 image] scipy {t_scipy:.3f} s wall ({c_scipy:.3f} s CPU) | "
        f"torch {t_torch:.3f} s wall ({c_torch:.3f} s CPU) | max relative diff {rel:.1e}"
    )

    scribbles = [
        simulate_scribbles(lab, n_strokes=args.n_strokes, stroke_length=args.stroke_length, seed=i)
        for i, lab in enumerate(labels)
    ]
    n_bg = int(sum((s == 1).sum() for s in scribbles))
    n_fg = int(sum((s == 2).sum() for s in scribbles))
    total = sum(s.size for s in scribbles)
    print(
        f"[scribbles] {args.n_strokes} strokes/class/slice (length <= {args.stroke_length}, brush radius 1): "
        f"{n_bg} background + {n_fg} foreground px = {100 * (n_bg + n_fg) / total:.2f}% of pixels"
    )
    t0, c0 = time.perf_counter(), time.process_time()
    forest = train_scribble_forest(
        images, scribbles, features=transform, n_estimators=args.n_estimators, n_jobs=args.n_jobs
    )
    t_total, c_total = time.perf_counter() - t0, time.process_time() - c0
    tm = forest.s2d_timing_
    print(
        f"[target forest, {len(images)} slices] features {tm['features_s']:.2f} s + fit {tm['fit_s']:.2f} s "
        f"({forest.s2d_n_train_} px, {args.n_estimators} trees) = {t_total:.2f} s wall, {c_total:.2f} s CPU"
    )

    f1s, t_pred = [], 0.0
    for img, lab in list(zip(images, labels))[: args.eval_slices]:
        feats = transform(img)
        t0 = time.perf_counter()
        prob = predict_foreground(forest, feats)
        t_pred += time.perf_counter() - t0
        pred, gt = prob[0] > 0.5, lab[0] > 0
        tp = float((pred & gt).sum())
        f1s.append(2 * tp / max(float(pred.sum() + gt.sum()), 1.0))
    if f1s:
        n_eval = len(f1s)
        f1 = np.mean(f1s)
        print(f"[reference] prediction {t_pred / n_eval:.2f} s/slice; RF F1 (mito), {n_eval} slices: {f1:.3f}")
    return {
        "features_scipy_s": t_scipy,
        "features_torch_s": t_torch,
        "target_features_s": tm["features_s"],
        "target_fit_s": tm["fit_s"],
        "target_total_s": t_total,
        "target_total_cpu_s": c_total,
        "scribble_px": n_bg + n_fg,
        "rf_f1": float(np.mean(f1s)) if f1s else None,
    }


if __name__ == "__main__":
    main()
