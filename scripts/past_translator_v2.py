"""Does PAST's translator translate? Fit one translator on a pair and measure it (one torch thread).

Translators (``kind`` in the config JSON):

- ``intensity``: ``train_translation.json`` as it is (the intensity translator, the default);
- ``cyclegan``: ``train_translation.json`` + ``cyclegan.json``; ``"residual": true`` and ``"lid"`` set the former
  default (residual output, identity weight 5);
- ``identity``, ``histmatch``, ``fda``: no training; each source image histogram-matched / FDA-aligned (beta 0.05)
  to a random target training image, as the ``histmatch`` / ``fda`` baselines do in their training transform;
- ``demo_curve`` (the 2D demo pair only): the demo simulator's own target contrast curve applied to the source
  images (``monai_uda.data.demo.scanner_b`` without its bias field, blur and noise): the paired truth that a
  per-pixel translator could at best reach.

Measures on the z-scored images (the segmentation pipeline's z-score; non-zero voxels of 3D volumes; 2D translators
run slice-wise along array axis 2 of volumes):

- ``w1_*``: 1D Wasserstein distance of the intensity distributions (each side z-scored again, as the earlier
  check did) of the source (``src``) or the translated source (``trans``) against the target training images;
- ``w1c_*``: the class-conditional version: per label class, translated-source intensities under the *source
  labels* against target intensities under the *target_test labels* (evaluation labels, read by this script only),
  averaged over classes. It drops only when each tissue moves to the target's intensity of that tissue, i.e.
  when the translation keeps the labels true;
- ``swd_*``: sliced Wasserstein distance of the 7x7 patches of 2x-pooled slices (the intensity translator's own
  objective, on whole images, more samples; ``swd_tgt_tgt`` is target half vs target half: the noise floor);
- ``w2_*``: the target-normalised W2 of ``monai_uda.methods.bn_reestimation.wasserstein.domain_shift_distance``
  (per channel, mean over BatchNorm layers) of a source model's features, source or translated source vs target;
  the source model is the source bundle at the demo budget, trained once into ``<out_root>/source_model``;
- ``corr``: correlation of the translated source with its input (1: an increasing affine map, e.g. the identity);
  ``identity``: mean |T(x) - x| / mean |x|;
- ``cycle``: mean |F(T(x)) - x| / mean |x| (the earlier table's measure) and ``cycle_abs``: mean |F(T(x)) - x| in
  z-units.

Writes one JSON line to ``<out_root>/results.jsonl`` and prints it; ``--table`` turns that file into
``<out_root>/results.csv`` and prints a markdown table::

    python scripts/past_translator_v2.py DATALIST NAME '{"kind": "intensity", "seed": 0}' [OUT_ROOT] [--overrides JSON]
    python scripts/past_translator_v2.py --table OUT_ROOT
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)

from scipy.stats import wasserstein_distance  # noqa: E402

from monai_uda.bundle import DEMO_SOURCE_BUDGET, resolve_source_checkpoint, run_bundle  # noqa: E402
from monai_uda.data import UDAData  # noqa: E402
from monai_uda.methods.past.cyclegan_trainer import translate_padded  # noqa: E402
from monai_uda.methods.past.intensity_translator import SlicedPatchDistance  # noqa: E402
from monai_uda.methods.past.past import load_generator  # noqa: E402
from monai_uda.transforms import segmentation_transforms  # noqa: E402

N_IMAGES = 12


def _plain(x):
    return torch.as_tensor(np.asarray(x), dtype=torch.float32)


def _slices(v: torch.Tensor) -> torch.Tensor:
    """(C, H, W) -> (1, C, H, W); (C, H, W, D) -> (D, C, H, W)."""
    return v[None] if v.ndim == 3 else v.permute(3, 0, 1, 2)


def _unslice(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return s[0] if like.ndim == 3 else s.permute(1, 2, 3, 0)


def _apply(gen, v: torch.Tensor) -> torch.Tensor:
    """A 2D generator on an image or, slice by slice, on a volume (padded to a multiple of 2**n_down)."""
    s = _slices(v)
    with torch.no_grad():
        y = torch.cat([translate_padded(gen, s[i : i + 8]) for i in range(0, s.shape[0], 8)])
    if v.ndim == 4:  # 3D volumes: the background (exact zeros of the non-zero z-score) stays zero
        y = torch.where(s == 0, torch.zeros_like(y), y)
    return _unslice(y, v)


def _w1(a: np.ndarray, b: np.ndarray, rng) -> float:
    z = lambda x: (x - x.mean()) / (x.std() + 1e-8)  # noqa: E731
    s = lambda x: rng.choice(x, min(200000, x.size), replace=False) if x.size > 200000 else x  # noqa: E731
    return float(wasserstein_distance(s(z(a)), s(z(b))))


def _fg(vols, nz):
    return np.concatenate([(v[v != 0] if nz else v).numpy().ravel() for v in vols])


def _class_w1(vols, labs, tvols, tlabs, classes, nz) -> float:
    out = []
    rng = np.random.default_rng(0)
    allv = _fg(vols, nz)
    allt = _fg(tvols, nz)
    for c in classes:
        a = np.concatenate([v[(l == c) & ((v != 0) if nz else True)].numpy().ravel() for v, l in zip(vols, labs)])
        b = np.concatenate([t[(l == c) & ((t != 0) if nz else True)].numpy().ravel() for t, l in zip(tvols, tlabs)])
        if a.size < 10 or b.size < 10:
            continue
        # z-scored with each side's whole-image statistics (not per class): the class means must move too
        za, zb = (a - allv.mean()) / allv.std(), (b - allt.mean()) / allt.std()
        s = lambda x: rng.choice(x, min(100000, x.size), replace=False) if x.size > 100000 else x  # noqa: E731
        out.append(float(wasserstein_distance(s(za), s(zb))))
    return float(np.mean(out))


def _swd(a_vols, b_vols, seed=0) -> float:
    a = torch.cat([_slices(v) for v in a_vols])
    b = torch.cat([_slices(v) for v in b_vols])
    if a_vols[0].ndim == 4:  # volumes: only slices with some foreground
        a = a[(a != 0).flatten(1).float().mean(1) > 0.05]
        b = b[(b != 0).flatten(1).float().mean(1) > 0.05]
    d = SlicedPatchDistance(a, b, projections=128, samples=20000, seed=seed)
    return d.distance(a)


def _w2(model, a_vols, b_vols) -> float:
    from monai.transforms import DivisiblePad

    from monai_uda.methods.bn_reestimation.wasserstein import aggregate_distance, domain_shift_distance

    pad = DivisiblePad(16)
    batches = lambda vols: [pad(v)[None].as_tensor() if hasattr(pad(v), "as_tensor") else pad(v)[None] for v in vols]  # noqa: E731
    rows = domain_shift_distance(model, batches(a_vols), batches(b_vols))
    return aggregate_distance(rows)


def source_model(datalist: str, out_root: str, uda: UDAData):
    from monai_uda.networks import UDAUNet

    roi = [64, 64] if uda.spatial_dims == 2 else [48, 48, 48]
    ckpt = resolve_source_checkpoint(None, os.path.join(out_root, "source_model", uda.name), datalist=datalist,
                                     spatial_dims=uda.spatial_dims, roi_size=roi, seed=0, amp=False,
                                     device="$torch.device('cpu')", progress=False, **DEMO_SOURCE_BUDGET)
    net = UDAUNet(spatial_dims=uda.spatial_dims, in_channels=uda.in_channels, out_channels=uda.num_classes)
    sd = torch.load(ckpt, map_location="cpu", weights_only=True)
    net.load_state_dict(sd.get("model", sd) if isinstance(sd, dict) and "model" in sd else sd)
    return net.eval()


def translators(kind: str, cfg: dict, datalist: str, out: str, uda: UDAData, extra: dict):
    """(g, f, seconds): the fitted source->target and target->source maps (f None when there is none)."""
    if kind in ("identity", "histmatch", "fda", "demo_curve"):
        return kind, None, 0.0
    layers = ["train_translation.json"] + (["cyclegan.json"] if kind == "cyclegan" else [])
    ov = dict(datalist=datalist, ckpt_dir=out, output_dir=out, device="$torch.device('cpu')", amp=False,
              seed=cfg.get("seed", 0), progress=False, translation_epochs=cfg.get("epochs", 12),
              translation_epoch_length=cfg.get("epoch_length", 20), translation_batch_size=cfg.get("batch", 4),
              translation_patch_size=[cfg.get("patch", 128)] * 2)
    if kind == "cyclegan":
        ov.update({"translator_def#residual_output": cfg.get("residual", False), "lambda_identity": cfg.get("lid", 0.5)})
    ov.update(extra)
    t0 = time.time()
    wf = run_bundle("pixel_alignment_segmentation", layers, workflow_type=None, **ov)
    seconds = time.time() - t0
    net = wf.parser.get_parsed_content("cyclegan")
    ckpt = os.path.join(out, "translation", "cyclegan.pt")
    g = load_generator(net, ckpt).eval()
    f = load_generator(net, ckpt, attr="g_ts").eval()
    return g, f, seconds


def measure(datalist: str, name: str, cfg: dict, out_root: str, extra: dict) -> dict:
    from monai_uda.methods.past.fourier_domain_adaptation import FourierDomainAdaptation
    from monai_uda.methods.past.histogram_matching import HistogramMatching

    uda = UDAData(datalist)
    nz = uda.spatial_dims == 3
    kind = cfg.get("kind", "intensity")
    g, f, seconds = translators(kind, cfg, datalist, os.path.join(out_root, name), uda, extra)
    tf = segmentation_transforms("eval", uda=uda)
    n = cfg.get("images", N_IMAGES)
    src = [tf(dict(it)) for it in uda.split("source_training")[:n]]
    xs = [_plain(d["image"]) for d in src]
    ys = [_plain(d["label"]) for d in src]
    tt = segmentation_transforms("target", uda=uda)
    xt = [_plain(tt({"image": it["image"]})["image"]) for it in uda.split("target_training")[:n]]
    tst = [tf(dict(it)) for it in uda.split("target_test")[:n]]
    xtest, ytest = [_plain(d["image"]) for d in tst], [_plain(d["label"]) for d in tst]
    rng = np.random.default_rng(cfg.get("seed", 0))
    if g == "identity":
        gx, cyc = xs, None
    elif g == "histmatch":
        gx = [_plain(HistogramMatching(reference=xt[int(rng.integers(len(xt)))], nonzero=nz)(x)) for x in xs]
        cyc = None
    elif g == "demo_curve":
        import nibabel as nib

        z = lambda a: (a - a.mean()) / a.std()  # noqa: E731 (the 2D pipeline's z-score, over the whole image)
        curve = lambda t: np.exp(-(((t - 0.38) / 0.22) ** 2)) * (t > 0.06)  # noqa: E731 (demo.scanner_b's curve)
        gx = [torch.as_tensor(z(curve(nib.load(it["image"]).get_fdata())), dtype=torch.float32)[None]
              for it in uda.split("source_training")[:n]]
        cyc = None
    elif g == "fda":
        gx = [_plain(FourierDomainAdaptation(target=xt[int(rng.integers(len(xt)))], beta=0.05)(x)) for x in xs]
        cyc = None
    else:
        gx = [_apply(g, x) for x in xs]
        cyc = [_apply(f, y) for y in gx]
    X, G, T = _fg(xs, nz), _fg(gx, nz), _fg(xt, nz)
    r = np.random.default_rng(0)
    classes = sorted(int(c) for c in np.unique(np.concatenate([y.numpy().ravel() for y in ys])))
    m = {
        "name": name, "pair": uda.name, **cfg,
        "w1_src_tgt": _w1(X, T, r), "w1_trans_tgt": _w1(G, T, r),
        "w1c_src_tgt": _class_w1(xs, ys, xtest, ytest, classes, nz),
        "w1c_trans_tgt": _class_w1(gx, ys, xtest, ytest, classes, nz),
        "swd_src_tgt": _swd(xs, xt), "swd_trans_tgt": _swd(gx, xt),
        "swd_tgt_tgt": _swd(xt[: len(xt) // 2], xt[len(xt) // 2 :]),
        "corr": float(np.corrcoef(G, X)[0, 1]), "identity": float(np.abs(G - X).mean() / np.abs(X).mean()),
        "seconds": round(seconds),
    }
    if cyc is not None:
        C = _fg(cyc, nz) if not nz else np.concatenate([c[x != 0].numpy().ravel() for c, x in zip(cyc, xs)])
        m["cycle"] = float(np.abs(C - X).mean() / np.abs(X).mean())
        m["cycle_abs"] = float(np.abs(C - X).mean())
    if cfg.get("w2", True):
        model = source_model(datalist, out_root, uda)
        m["w2_src_tgt"] = _w2(model, xs, xt)
        m["w2_trans_tgt"] = _w2(model, gx, xt)
    return m


COLUMNS = ["pair", "name", "kind", "seed", "w1_src_tgt", "w1_trans_tgt", "w1c_src_tgt", "w1c_trans_tgt", "swd_src_tgt",
           "swd_trans_tgt", "swd_tgt_tgt", "w2_src_tgt", "w2_trans_tgt", "corr", "identity", "cycle", "cycle_abs", "seconds"]


def table(root: str) -> str:
    """``<root>/results.jsonl`` -> ``<root>/results.csv`` (atomic); returns a markdown table of it."""
    import pandas as pd

    from monai_uda.utils import atomic_write_text

    rows = [json.loads(line) for line in open(os.path.join(root, "results.jsonl")) if line.strip()]
    df = pd.DataFrame(rows)
    cols = [c for c in COLUMNS if c in df] + [c for c in df if c not in COLUMNS]
    df = df[cols]
    atomic_write_text(os.path.join(root, "results.csv"), df.to_csv(index=False))
    show = ["pair", "name", "w1_trans_tgt", "w1c_trans_tgt", "swd_trans_tgt", "w2_trans_tgt", "corr", "cycle", "seconds"]
    head = "| " + " | ".join(show) + " |\n|" + "---|" * len(show) + "\n"
    fmt = lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    return head + "".join("| " + " | ".join(fmt(r.get(c)) for c in show) + " |\n" for r in df.to_dict("records"))


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--table":
        print(table(args[1]))
        sys.exit(0)
    extra = {}
    if "--overrides" in args:
        i = args.index("--overrides")
        extra = json.loads(args[i + 1])
        args = args[:i] + args[i + 2 :]
    datalist, name, cfg = args[0], args[1], json.loads(args[2])
    root = args[3] if len(args) > 3 else "results/past_translator_v2"
    os.makedirs(root, exist_ok=True)
    res = measure(datalist, name, cfg, root, extra)
    line = json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()})
    print(line)
    with open(os.path.join(root, "results.jsonl"), "a") as fh:
        fh.write(line + "\n")
