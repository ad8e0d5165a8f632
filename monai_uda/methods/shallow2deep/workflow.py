"""The steps of shallow-to-deep (Matskevych et al., Fig. 1) as functions the bundle ``shallow2deep_segmentation``
calls from its configs.

1. :func:`ensure_source_forests` - many forests on random source patches (Section 2.1).
2. The Prediction Enhancer is a ``SupervisedTrainer`` on :func:`enhancer_transforms` samples, i.e. a random
   forest's probability per sample (never the raw image), with :func:`enhancer_prepare_batch`.
3. :func:`scribble_items` + :func:`ensure_target_forest` - the target forest from brushstrokes
   (``0`` unlabelled, ``1`` background, ``2`` foreground). Scribbles come from user label files; only for
   the demo/benchmarks, when none are given, they are **simulated** from ``oracle_training`` labels (a
   simulated user, logged as such).
4. :class:`ForestEnhancerNet` - raw image -> pixel features -> target forest -> (enhancer) -> two-channel
   output, used to make the pseudo-labels (:func:`pseudo_label_items`, cached) and to evaluate the
   ``rf`` and ``enhancer`` stages like any network.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropSamplesd,
    SpatialPadd,
)
from torch import nn
from tqdm import tqdm

from monai_uda.methods.shallow2deep.forests import (
    load_forests,
    predict_foreground,
    save_forests,
    train_scribble_forest,
    train_source_forests,
)
from monai_uda.methods.shallow2deep.scribbles import simulate_scribbles
from monai_uda.methods.shallow2deep.s2d import PredictionEnhancer, as_forest_probability
from monai_uda.transforms.pipelines import load_transforms
from monai_uda.methods.shallow2deep.pixel_features import PixelFeatures
from monai_uda.methods.shallow2deep.random_forest_probability import ForestProbabilityd, RandForestProbabilityd
from monai_uda.utils import atomic_json, atomic_write

__all__ = [
    "SIMULATED_USER_WARNING",
    "loaded_items",
    "ensure_source_forests",
    "enhancer_transforms",
    "enhancer_validation_items",
    "enhancer_validation_transforms",
    "enhancer_prepare_batch",
    "feature_margin",
    "scribble_items",
    "ensure_target_forest",
    "ForestEnhancerNet",
    "pseudo_label_items",
    "pseudo_label_transforms",
    "write_summary",
]

logger = logging.getLogger(__name__)

SIMULATED_USER_WARNING = (
    "SIMULATED USER: no scribble files were given, so brushstrokes are simulated from the '{key}' labels "
    "(demo/benchmark only; a real user draws them, e.g. in MONAI Label). Budget: {budget}."
)


_WARNED: set[str] = set()


def _uda_kwargs(uda) -> dict[str, Any]:
    return {"spatial_dims": uda.spatial_dims, "in_channels": uda.in_channels, "label_map": uda.label_map,
            "binarize": uda.binarize, "pixdim": uda.pixdim}


def loaded_items(
    uda, key: str, keys: Sequence[str] = ("image",), limit: int | None = None, items=None, progress: bool = True
) -> list[dict]:
    """Load (and normalise, exactly like the segmentation pipelines) the items of split ``key``."""
    items = uda.split(key, limit=limit) if items is None else items
    label_key = "label" if "label" in keys else None
    xs = Compose(load_transforms(list(keys), label_key=label_key, **_uda_kwargs(uda)))
    return [xs(dict(it)) for it in tqdm(items, desc=f"load {key}", leave=False, disable=not progress)]


def _to_np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def feature_margin(features: PixelFeatures | Mapping | None = None) -> int:
    """Context (pixels) the largest filter of ``features`` reaches: ``truncate * max(sigma)``."""
    f = PixelFeatures.from_config(features) if isinstance(features, Mapping) else (features or PixelFeatures())
    return int(np.ceil(f.truncate * max(f.sigmas)))


# ----------------------------------------------------------------------------------------- step 1
def ensure_source_forests(
    path: str,
    uda,
    key: str = "source_training",
    data_limit: int | None = None,
    n_forests: int = 24,
    patch_size_range: Sequence[int] = (32, 128),
    n_estimators: int = 10,
    samples_per_class: int = 300,
    features: Mapping | None = None,
    seed: int = 0,
    n_jobs: int = 1,
    overwrite: bool = False,
    distributed: bool = False,
    progress: bool = True,
) -> str:
    """Train the source forests (Section 2.1) and save them atomically to ``path``; reuse an existing file.

    Only the labelled source split ``key`` is read. Returns ``path``.

    With ``distributed`` (process group initialised, every rank calls this) the forests are split across
    the ranks (rank ``r`` fits forests ``r, r + W, ...``; patches and seeds are drawn identically
    everywhere), gathered on rank 0 in their single-process order and saved there: the file holds exactly
    the single-process forests. Every rank returns ``path`` once it is written.
    """
    exists = os.path.isfile(path) and not overwrite
    if distributed:
        from monai_uda.distributed import all_reduce

        exists = bool(all_reduce(torch.tensor([float(exists)]), op="min")[0] > 0)  # one decision for all ranks
    if exists:
        logger.info("source forests exist: %s", path)
        return path
    items = loaded_items(uda, key, ("image", "label"), data_limit, progress=progress)
    feats = PixelFeatures(**(features or {}))
    t = time.perf_counter()
    shard = None
    if distributed:
        from monai_uda.distributed import get_rank, get_world_size

        shard = (get_rank(), get_world_size())
    forests = train_source_forests(
        [_to_np(d["image"]) for d in items], [_to_np(d["label"]) for d in items], n_forests=n_forests,
        patch_size_range=tuple(patch_size_range), samples_per_class=samples_per_class, seed=seed, n_jobs=n_jobs,
        features=feats, n_estimators=n_estimators, shard=shard, progress=progress,
    )
    if distributed:
        from monai_uda.distributed import all_gather_objects, interleave_gathered, on_rank0

        forests = interleave_gathered(all_gather_objects(forests))
        on_rank0(save_forests, path, forests, feats)
        logger.info("trained %d source forests on %d ranks in %.1f s -> %s", len(forests), shard[1],
                    time.perf_counter() - t, path)
        return path
    save_forests(path, forests, feats)
    logger.info("trained %d source forests in %.1f s -> %s", len(forests), time.perf_counter() - t, path)
    return path


# ----------------------------------------------------------------------------------------- step 2
def enhancer_transforms(
    uda, forests: Sequence, features: PixelFeatures | Mapping, roi_size: Sequence[int], num_samples: int = 2,
    margin: int | None = None, augment: bool = True,
) -> Compose:
    """Enhancer training chain: load source image + label, crop ``roi_size + 2 * margin`` (balanced
    foreground/background centres), augment, replace the image by a random forest's probability
    (:class:`RandForestProbabilityd`, image dropped) and crop the margin off.

    The samples hold only ``rf_prob`` (tagged) and ``label``.
    """
    margin = feature_margin(features) if margin is None else int(margin)
    big = [int(r) + 2 * margin for r in roi_size]
    keys = ["image", "label"]
    xs = load_transforms(keys, label_key="label", **_uda_kwargs(uda))
    xs += [
        SpatialPadd(keys=keys, spatial_size=big, mode="reflect"),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=big, pos=0.5, neg=0.5,
                               num_samples=num_samples, allow_smaller=False),
    ]
    if augment:
        xs += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(uda.spatial_dims)]
        xs.append(RandRotate90d(keys=keys, prob=0.5, spatial_axes=(0, 1)))
    xs.append(RandForestProbabilityd("image", forests, features, "rf_prob", ("label",), margin))
    return Compose(xs)


def enhancer_validation_items(uda, key: str = "source_validation", n_forests: int = 1,
                              limit: int | None = None) -> list[dict]:
    """The items of split ``key`` (labelled source images, never target ones), item ``k`` naming forest
    ``k mod n_forests`` (``forest_index``): each validation image gets the same forest every epoch, and the images
    together see several forests, as the enhancer does in training."""
    items = uda.split(key, limit=limit)
    if not items:
        raise ValueError(f"datalist split {key!r} is empty: the enhancer's validation needs labelled source images "
                         "(set validate_during_training to false to train without it).")
    return [dict(it, forest_index=k % max(1, int(n_forests))) for k, it in enumerate(items)]


def enhancer_validation_transforms(uda, forests: Sequence, features: PixelFeatures | Mapping) -> Compose:
    """Enhancer validation chain: load a whole source image + label, replace the image by its item's forest's
    probability (:class:`ForestProbabilityd`, image dropped). Deterministic, so a ``CacheDataset`` computes the
    features and forest probabilities once."""
    keys = ["image", "label"]
    xs = load_transforms(keys, label_key="label", **_uda_kwargs(uda))
    xs.append(ForestProbabilityd("image", forests, features, "rf_prob", ("label",)))
    return Compose(xs)


def enhancer_prepare_batch(batchdata: Mapping, device=None, non_blocking: bool = False, **kwargs):
    """``prepare_batch`` of the enhancer trainer: ``(rf_prob, label)``; a batch with a raw image is refused."""
    if "rf_prob" not in batchdata:
        raise KeyError("enhancer batches must hold 'rf_prob' (a forest probability); see RandForestProbabilityd.")
    if "image" in batchdata:
        raise ValueError("enhancer batches must not carry the raw 'image' (the enhancer never sees raw images).")
    return (batchdata["rf_prob"].to(device=device, non_blocking=non_blocking),
            batchdata["label"].to(device=device, non_blocking=non_blocking))


# ----------------------------------------------------------------------------------------- step 3
def _read_scribble_datalist(scribbles) -> list[dict]:
    if isinstance(scribbles, (str, os.PathLike)):
        with open(scribbles) as fh:
            data = json.load(fh)
        base = os.path.dirname(os.path.abspath(scribbles))
        data = data.get("scribbles", data) if isinstance(data, dict) else data
        data = [{k: v if os.path.isabs(str(v)) else os.path.join(base, v) for k, v in it.items()} for it in data]
    else:
        data = list(scribbles)
    for k, it in enumerate(data):
        if not isinstance(it, Mapping) or "image" not in it or "scribble" not in it:
            raise ValueError(f"scribbles[{k}] must be a dict with 'image' and 'scribble' (label file: "
                             f"0 unlabelled, 1 background, 2 foreground), got {it!r}.")
    return data


def scribble_items(
    uda,
    scribbles=None,
    simulate_key: str | None = "oracle_training",
    n_images: int = 4,
    n_strokes: int | Sequence[int] = 3,
    stroke_length: int = 40,
    brush_radius: int = 1,
    max_pixels: int | Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[dict], dict]:
    """Target images with brushstrokes, and the scribble budget.

    Args:
        uda: the pair (:class:`monai_uda.data.UDAData`).
        scribbles: the user's scribbles: a list of ``{"image", "scribble"}`` dicts or a JSON file holding
            one (paths relative to it). Scribble label files use ``0`` unlabelled, ``1`` background,
            ``2`` foreground (MONAI Label). When given, nothing else is read.
        simulate_key: when ``scribbles`` is ``None``: split whose labels the scribble **simulator** reads
            (``oracle_training`` - a simulated user for demo/benchmarks only; logged as a warning). ``None``
            makes missing scribbles an error.
        n_images, n_strokes, stroke_length, brush_radius, max_pixels, seed: simulator settings
            (:func:`monai_uda.methods.shallow2deep.scribbles.simulate_scribbles`), ``n_images`` images of the split.
        progress: show the loading bar.

    Returns:
        ``(items, info)``: items ``{"image": (1, *S) tensor, "scribble": (1, *S) uint8}`` and ``info`` with
        ``simulated``, ``scribble_images``, ``scribble_pixels`` (labelled pixels), ``scribble_bg_pixels``,
        ``scribble_fg_pixels``.
    """
    if scribbles is not None:
        src = _read_scribble_datalist(scribbles)
        loaded = loaded_items(uda, "scribbles", ("image", "scribble"), items=src, progress=progress)
        items = [{"image": d["image"], "scribble": np.rint(_to_np(d["scribble"])).astype(np.uint8)} for d in loaded]
        simulated = False
    else:
        if simulate_key is None:
            raise ValueError("no scribbles given and simulate_key=None: pass scribble label files "
                             "(a list of {'image', 'scribble'} or a JSON file).")
        split = uda.split(simulate_key)
        if not split:
            raise ValueError(f"no scribbles given and the split {simulate_key!r} is empty: nothing to simulate from.")
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(split), size=min(int(n_images), len(split)), replace=False).tolist())
        loaded = loaded_items(uda, simulate_key, ("image", "label"), items=[split[i] for i in pick],
                              progress=progress)
        items = [{"image": d["image"], "scribble": simulate_scribbles(
            _to_np(d["label"]), n_strokes=n_strokes if np.isscalar(n_strokes) else tuple(n_strokes),
            stroke_length=stroke_length, brush_radius=brush_radius,
            max_pixels=max_pixels if max_pixels is None or np.isscalar(max_pixels) else tuple(max_pixels),
            seed=seed + 1000 * k)} for k, d in enumerate(loaded)]  # the label is dropped here
        simulated = True
    scr = [d["scribble"] for d in items]
    info = {
        "simulated": simulated,
        "scribble_images": len(items),
        "scribble_pixels": int(sum((s > 0).sum() for s in scr)),
        "scribble_bg_pixels": int(sum((s == 1).sum() for s in scr)),
        "scribble_fg_pixels": int(sum((s == 2).sum() for s in scr)),
    }
    if simulated:
        budget = (f"{info['scribble_images']} images, {n_strokes} strokes/class of <= {stroke_length} steps, brush "
                  f"radius {brush_radius}: {info['scribble_pixels']} labelled pixels "
                  f"({info['scribble_bg_pixels']} bg / {info['scribble_fg_pixels']} fg)")
        message = SIMULATED_USER_WARNING.format(key=simulate_key, budget=budget)
        if message not in _WARNED:  # once per process: the stage and the adaptation run both build the strokes
            _WARNED.add(message)
            logger.warning(message)
    else:
        logger.info("user scribbles: %s", info)
    return items, info


def ensure_target_forest(
    path: str, items: Sequence[Mapping], features: Mapping | PixelFeatures | None = None, n_estimators: int = 10,
    seed: int = 0, n_jobs: int = 1, overwrite: bool = True, info: dict | None = None,
) -> str:
    """Train the target forest on the scribbled pixels only and save it (with its features) atomically.

    ``n_estimators``: as many trees as each source forest (see :func:`train_scribble_forest`). ``info`` (e.g. from
    :func:`scribble_items`) receives ``target_forest_features_s`` / ``target_forest_fit_s``.
    """
    if os.path.isfile(path) and not overwrite:
        return path
    feats = PixelFeatures.from_config(features) if isinstance(features, Mapping) else (features or PixelFeatures())
    forest = train_scribble_forest([_to_np(d["image"]) for d in items], [d["scribble"] for d in items],
                                   features=feats, n_estimators=n_estimators, seed=seed, n_jobs=n_jobs)
    save_forests(path, forest, feats)
    if info is not None:
        info["target_forest_features_s"] = round(forest.s2d_timing_["features_s"], 3)
        info["target_forest_fit_s"] = round(forest.s2d_timing_["fit_s"], 3)
    logger.info("target forest on %d scribbled pixels (%s) -> %s", forest.s2d_n_train_, forest.s2d_timing_, path)
    return path


# ----------------------------------------------------------------------------------------- step 4
class ForestEnhancerNet(nn.Module):
    """Raw image -> pixel features -> forest foreground probability ``p`` -> (Prediction Enhancer) -> ``p'``.

    Returns two-channel "logits" ``log([1 - p', p'])`` (a softmax gives back the probabilities), so the
    ``rf`` and ``enhancer`` stages are evaluated and used like any segmentation network. The enhancer
    (a :class:`PredictionEnhancer`) only ever receives the forest probability. Inputs are padded to a
    multiple of 16 for the enhancer UNet and cropped back.

    Args:
        forest_path: file of :func:`monai_uda.methods.shallow2deep.forests.save_forests` (its first forest is used).
        enhancer: the enhancer network (1 -> 2 channels, e.g. ``UDAUNet``) or ``None`` for the forest alone.
        enhancer_checkpoint: optional state dict file for ``enhancer`` (a plain state dict or ``{"model": ...}``).
    """

    def __init__(self, forest_path: str, enhancer: nn.Module | None = None, enhancer_checkpoint: str | None = None):
        super().__init__()
        forests, self.features = load_forests(forest_path)
        self.forest = forests[0]
        self.enhancer = PredictionEnhancer(enhancer) if enhancer is not None else None
        if enhancer_checkpoint is not None:
            if enhancer is None:
                raise ValueError("enhancer_checkpoint given but enhancer is None.")
            if not os.path.isfile(enhancer_checkpoint):
                raise FileNotFoundError(f"enhancer_checkpoint not found: {enhancer_checkpoint}")
            sd = torch.load(enhancer_checkpoint, map_location="cpu", weights_only=True)
            enhancer.load_state_dict(sd.get("model", sd) if isinstance(sd, dict) else sd)

    @torch.no_grad()
    def forest_probability(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *S)`` forest foreground probability of a raw image batch ``(B, 1, *S)``."""
        if x.ndim < 4 or x.shape[1] != 1:
            raise ValueError(f"ForestEnhancerNet takes a (B, 1, *spatial) image batch, got {tuple(x.shape)}.")
        arr = x.detach().float().cpu().numpy()
        probs = [predict_foreground(self.forest, self.features(a)) for a in arr]
        return torch.as_tensor(np.stack(probs), device=x.device)

    def foreground(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *S)`` foreground probability of the forest or, with an enhancer, of the enhancer."""
        p = self.forest_probability(x)
        if self.enhancer is None:
            return p
        spatial = p.shape[2:]
        pad = []
        for s in reversed(spatial):
            pad += [0, (-s) % 16]
        q = F.pad(p, pad, mode="replicate") if any(pad) else p
        logits = self.enhancer(as_forest_probability(q))
        fg = torch.softmax(logits, 1)[:, 1:] if logits.shape[1] == 2 else torch.sigmoid(logits)
        return fg[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.foreground(x).clamp(1e-6, 1 - 1e-6)
        return torch.log(torch.cat([1 - p, p], 1))


def pseudo_label_items(
    net: ForestEnhancerNet, uda, key: str = "target_training", data_limit: int | None = None,
    cache_dir: str | None = None, device: str | torch.device = "cpu", indices: Sequence[int] | None = None,
    progress: bool = True,
) -> list[dict]:
    """The enhancer's soft foreground probabilities on the unlabelled target images (the pseudo-labels).

    Only images of ``key`` are read. Each item is ``{"image": path, "pseudo": (1, *S) float tensor}``, the
    pseudo-label in the loaded (normalised, oriented) image space. With ``cache_dir`` each pseudo-label is
    written once (``.npy``, atomically) and reused (delete the folder after changing the forest/enhancer).
    ``indices`` (positions in the split) restricts the work to those items, in that order: a multi-GPU
    rank labels only its own shard (:func:`monai_uda.distributed.shard_indices`); cache names keep the
    position in the split.
    """
    items = uda.split(key, limit=data_limit)
    order = range(len(items)) if indices is None else [int(i) for i in indices]
    net = net.to(device).eval()
    out = []
    for k in tqdm(order, desc="pseudo-labels", leave=False, disable=not progress):
        it = items[k]
        cached = None
        if cache_dir:
            name = os.path.basename(str(it["image"])).split(".")[0]
            cached = os.path.join(cache_dir, f"{k:05d}_{name}.npy")
        if cached and os.path.isfile(cached):
            p = torch.as_tensor(np.load(cached))
        else:
            img = loaded_items(uda, key, ("image",), items=[it], progress=False)[0]["image"]
            with torch.no_grad():
                p = net.foreground(torch.as_tensor(img)[None].to(device))[0].float().cpu()
            if cached:
                atomic_write(cached, lambda tmp, a=p.numpy(): np.save(tmp, a))
        out.append({"image": it["image"], "pseudo": p})
    return out


def pseudo_label_transforms(uda, roi_size: Sequence[int], num_samples: int = 2, augment: bool = True) -> Compose:
    """Pseudo-label network training chain: target image (loaded like everywhere) + its soft pseudo-label,
    random crops of ``roi_size`` and flips/rotations applied to both."""
    keys = ["image", "pseudo"]
    xs = load_transforms(["image"], label_key=None, **_uda_kwargs(uda))
    xs += [
        EnsureTyped(keys="pseudo", dtype=torch.float32),
        SpatialPadd(keys=keys, spatial_size=list(roi_size)),
        RandSpatialCropSamplesd(keys=keys, roi_size=list(roi_size), num_samples=num_samples, random_size=False),
    ]
    if augment:
        xs += [RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in range(uda.spatial_dims)]
        xs.append(RandRotate90d(keys=keys, prob=0.5, spatial_axes=(0, 1)))
    return Compose(xs)


def write_summary(path: str, **parts: Any) -> str:
    """Write the run's facts (scribble budget, simulated user or not, timings) as JSON, atomically."""
    return atomic_json(parts, path)
