"""Random Forests of shallow-to-deep (Matskevych et al.): many source forests (Section 2.1) and the
brushstroke-trained target forest (Section 2.1, last paragraph; Fig. 1b).

Source forests: "we sample patches of various size and train a classifier for each patch based on the
raw data and dense labels. Typically, we train 500 to 1000 different classifiers." Each forest here is a
scikit-learn ``RandomForestClassifier`` fitted on a random patch of a random source image, with a
random side length in ``patch_size_range`` and a class-balanced pixel sample; patches that contain one
class only are skipped (redrawn). Features are computed on the patch plus a context margin (so that the
large-scale filters see real image context, as they would on a whole image) and the margin is cropped.

Target forest: trained from brushstrokes with the MONAI Label scribble convention
``0 = unlabelled, 1 = background, 2 = foreground``. Unlabelled pixels never enter the training set.

Every forest predicts classes ``{0 = background, 1 = foreground}`` (scribble labels are mapped to
that), so :func:`predict_foreground` works the same for source and target forests.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Sequence

import joblib
import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import RandomForestClassifier
from tqdm import tqdm

from monai_uda.methods.shallow2deep.pixel_features import PixelFeatures

__all__ = [
    "SCRIBBLE_UNLABELLED",
    "SCRIBBLE_BACKGROUND",
    "SCRIBBLE_FOREGROUND",
    "train_source_forests",
    "train_scribble_forest",
    "scribble_training_set",
    "predict_foreground",
    "save_forests",
    "load_forests",
    "load_single_channel",
    "forests_summary",
]

#: MONAI Label scribble convention
SCRIBBLE_UNLABELLED, SCRIBBLE_BACKGROUND, SCRIBBLE_FOREGROUND = 0, 1, 2
_FORMAT_VERSION = 1
_PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# ---------------------------------------------------------------------------------------------- I/O helpers
def load_single_channel(item, name: str = "image") -> np.ndarray:
    """Return a ``(1, *spatial)`` float/int numpy array from an array, tensor or image file path.

    Files are read with ``monai.transforms.LoadImage`` (PNG, TIFF, NIfTI, ...). A spatial-only array
    (2D ``(H, W)``) gets a channel axis; 2D image files (PNG, TIFF, JPEG) are read in numpy
    ``(row, column)`` order so that files and arrays of the same image agree; a 3D array must already be
    channel-first ``(1, D, H, W)``
    or be passed as ``(1, H, W)`` for 2D, so that 2D and 3D are never confused.
    """
    if isinstance(item, (str, os.PathLike)):
        from monai.transforms import LoadImage

        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"{name} file not found: {path}")
        if path.suffix.lower() in _PIL_SUFFIXES:  # numpy (row, column) order, as PIL/skimage arrays are
            loader = LoadImage(image_only=True, ensure_channel_first=True, reader="PILReader", reverse_indexing=False)
        else:
            loader = LoadImage(image_only=True, ensure_channel_first=True)
        arr = np.asarray(loader(str(path)))
        if arr.shape[0] != 1:
            raise ValueError(f"{name} file {path} has {arr.shape[0]} channels; a single-channel image is required.")
        return arr
    if hasattr(item, "detach"):
        item = item.detach().cpu().numpy()
    arr = np.asarray(item)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim not in (3, 4) or arr.shape[0] != 1:
        raise ValueError(f"{name} must be (H, W), (1, H, W) or (1, D, H, W); got shape {arr.shape}.")
    return arr


def _as_list(x) -> list:
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _new_forest(n_estimators: int, max_depth, seed: int, n_jobs: int, **kwargs) -> RandomForestClassifier:
    return RandomForestClassifier(
        n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=n_jobs, **kwargs
    )


# ---------------------------------------------------------------------------------------------- prediction
def predict_foreground(forest: RandomForestClassifier, features, batch_pixels: int = 1 << 18) -> np.ndarray:
    """Foreground probability of ``forest`` for every pixel.

    Args:
        forest: a fitted forest from this module (classes ``{0, 1}``, 1 = foreground).
        features: ``(F, *spatial)`` pixel features (e.g. the output of :class:`PixelFeatures`).
        batch_pixels: pixels per ``predict_proba`` call (bounds memory).

    Returns:
        ``(1, *spatial)`` float32 array in ``[0, 1]``.
    """
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    features = np.asarray(features)
    n_in = getattr(forest, "n_features_in_", None)
    if n_in is None:
        raise ValueError("forest is not fitted.")
    if features.ndim < 3 or features.shape[0] != n_in:
        raise ValueError(
            f"features must be (F, *spatial) with F={n_in} channels (the forest's feature count), got shape "
            f"{features.shape}; a raw image must go through PixelFeatures first."
        )
    classes = list(forest.classes_)
    if 1 not in classes:
        raise ValueError(f"forest was not trained with a foreground class (classes {classes}).")
    fg = classes.index(1)
    spatial = features.shape[1:]
    x = features.reshape(n_in, -1).T
    out = np.empty(x.shape[0], dtype=np.float32)
    for start in range(0, x.shape[0], batch_pixels):
        out[start : start + batch_pixels] = forest.predict_proba(x[start : start + batch_pixels])[:, fg]
    return out.reshape((1, *spatial))


# ---------------------------------------------------------------------------------------------- source forests
def _draw_patch(shape: Sequence[int], size_range: tuple[int, int], rng: np.random.Generator):
    size = int(rng.integers(size_range[0], size_range[1] + 1))
    sizes = [min(size, s) for s in shape]
    start = [int(rng.integers(0, s - z + 1)) for s, z in zip(shape, sizes)]
    return tuple(start), tuple(sizes)


def _balanced_sample(label: np.ndarray, samples_per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices: up to ``samples_per_class`` pixels of each class, without replacement."""
    flat = label.ravel()
    idx = []
    for c in np.unique(flat):
        where = np.flatnonzero(flat == c)
        idx.append(rng.choice(where, size=min(samples_per_class, where.size), replace=False))
    return np.concatenate(idx)


def _fit_patch_forest(image, label, start, sizes, feature_config, samples_per_class, seed, forest_kwargs):
    transform = PixelFeatures.from_config(feature_config)
    margin = int(np.ceil(transform.truncate * max(transform.sigmas) * 1.5))  # 1.5: structure tensor outer scale
    lo = [max(0, s - margin) for s in start]
    hi = [min(n, s + z + margin) for s, z, n in zip(start, sizes, image.shape)]
    feats = transform(image[(None, *(slice(a, b) for a, b in zip(lo, hi)))].astype(np.float32))
    crop = tuple(slice(s - a, s - a + z) for s, a, z in zip(start, lo, sizes))
    feats = feats[(slice(None), *crop)]
    lab = label[tuple(slice(s, s + z) for s, z in zip(start, sizes))]
    rng = np.random.default_rng(seed)
    idx = _balanced_sample(lab, samples_per_class, rng)
    x = feats.reshape(feats.shape[0], -1).T[idx]
    y = lab.ravel()[idx]
    forest = _new_forest(seed=seed, n_jobs=1, **forest_kwargs)
    forest.fit(x, y)
    forest.s2d_patch_ = {"start": start, "size": sizes, "n_train": int(idx.size)}
    return forest


def train_source_forests(
    images: Sequence,
    labels: Sequence,
    n_forests: int = 500,
    patch_size_range: tuple[int, int] = (64, 256),
    samples_per_class: int = 500,
    seed: int = 0,
    n_jobs: int = -1,
    features: PixelFeatures | None = None,
    n_estimators: int = 10,
    max_depth: int | None = None,
    max_tries_factor: int = 20,
    progress: bool = True,
    backend: str = "threading",
    shard: tuple[int, int] | None = None,
    **forest_kwargs,
) -> list[RandomForestClassifier]:
    """Train many small forests on random patches of densely labelled source images (Section 2.1).

    Args:
        images: source images (arrays ``(H, W)``/``(1, *spatial)`` or file paths).
        labels: dense binary labels (``0`` background, ``1`` foreground; any value > 0 is foreground).
        n_forests: number of forests (the paper trains 500 to 1000).
        patch_size_range: inclusive range of the patch side length in pixels (clipped to the image).
        samples_per_class: class-balanced sampling: at most this many pixels per class and patch.
        seed: seed of the whole procedure (patch draws and forests).
        n_jobs: joblib workers (``-1`` = all cores); each forest is fitted single-threaded.
        backend: joblib backend. ``"threading"`` (default) has no worker start-up cost; tree fitting and
            most of the scipy filtering release the GIL. ``"loky"`` (processes) scales better for
            hundreds of forests but every worker first imports the package (seconds).
        features: the feature transform (default :class:`PixelFeatures`'s ilastik set).
        n_estimators, max_depth, forest_kwargs: passed to ``RandomForestClassifier``.
        max_tries_factor: give up after ``max_tries_factor * n_forests`` draws (single-class patches).
        progress: show a tqdm bar.
        shard: ``(index, count)``: fit only forests ``index, index + count, ...`` of the full list (the
            patches and per-forest seeds are still drawn for all ``n_forests``, so the shards of
            ``count`` workers, interleaved back, are exactly the single-process forests). Multi-GPU runs
            split the forests across ranks this way.

    Returns:
        The fitted forests (only the shard's, in order, with ``shard``); each carries
        ``s2d_patch_ = {"image", "start", "size", "n_train"}`` and
        ``s2d_skipped_patches_`` (how many single-class patches were skipped and redrawn in total).
    """
    images = [load_single_channel(i, "images[%d]" % k)[0] for k, i in enumerate(_as_list(images))]
    labels = [load_single_channel(lab, "labels[%d]" % k)[0] for k, lab in enumerate(_as_list(labels))]
    if len(images) != len(labels) or not images:
        raise ValueError(f"images and labels must be non-empty and of equal length, got {len(images)}, {len(labels)}.")
    for k, (im, lab) in enumerate(zip(images, labels)):
        if im.shape != lab.shape:
            raise ValueError(f"images[{k}] has shape {im.shape} but labels[{k}] has shape {lab.shape}.")
    lo, hi = (int(v) for v in patch_size_range)
    if not 2 <= lo <= hi:
        raise ValueError(f"patch_size_range must satisfy 2 <= min <= max, got {patch_size_range}.")
    labels = [(lab > 0).astype(np.uint8) for lab in labels]
    features = features or PixelFeatures()
    rng = np.random.default_rng(seed)
    jobs, tries, skipped = [], 0, 0
    while len(jobs) < n_forests:
        if tries >= max_tries_factor * n_forests:
            raise RuntimeError(
                f"found only {len(jobs)} of {n_forests} two-class patches in {tries} draws; the labels hold too "
                "little foreground (or background) for patch_size_range={patch_size_range}."
            )
        tries += 1
        k = int(rng.integers(len(images)))
        start, sizes = _draw_patch(images[k].shape, (lo, hi), rng)
        patch = labels[k][tuple(slice(s, s + z) for s, z in zip(start, sizes))]
        if patch.min() == patch.max():  # single-class patch: skip
            skipped += 1
            continue
        jobs.append((k, start, sizes, int(rng.integers(2**31 - 1))))
    if shard is not None:
        index, count = (int(v) for v in shard)
        if not 0 <= index < count:
            raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {shard}.")
        jobs = jobs[index::count]
    kwargs = dict(n_estimators=n_estimators, max_depth=max_depth, **forest_kwargs)
    config = features.get_config()
    tasks = (
        delayed(_fit_patch_forest)(images[k], labels[k], start, sizes, config, samples_per_class, s, kwargs)
        for k, start, sizes, s in jobs
    )
    out = Parallel(n_jobs=n_jobs, backend=backend, return_as="generator")(tasks)
    forests = list(tqdm(out, total=len(jobs), desc="source forests", disable=not progress))
    for f, (k, *_rest) in zip(forests, jobs):
        f.s2d_patch_["image"] = k
    for f in forests:
        f.s2d_skipped_patches_ = skipped
    return forests


# ---------------------------------------------------------------------------------------------- target forest
def scribble_training_set(features, scribbles) -> tuple[np.ndarray, np.ndarray]:
    """Training pixels of a scribble forest: only pixels with scribble 1 (background) or 2 (foreground).

    Args:
        features: ``(F, *spatial)`` features.
        scribbles: ``(1, *spatial)`` or ``(*spatial)`` labels in ``{0, 1, 2}``.

    Returns:
        ``x`` of shape ``(n_scribbled, F)`` and ``y`` in ``{0 = background, 1 = foreground}``.
    """
    if hasattr(features, "detach"):
        features = features.detach().cpu().numpy()
    if hasattr(scribbles, "detach"):
        scribbles = scribbles.detach().cpu().numpy()
    features, scribbles = np.asarray(features), np.asarray(scribbles)
    if scribbles.shape == features.shape[1:]:
        scr = scribbles
    elif scribbles.shape[0] == 1 and scribbles.shape[1:] == features.shape[1:]:
        scr = scribbles[0]
    else:
        raise ValueError(f"scribbles shape {scribbles.shape} != the features' spatial shape {features.shape[1:]}.")
    values = np.unique(scr)
    bad = [v for v in values if v not in (SCRIBBLE_UNLABELLED, SCRIBBLE_BACKGROUND, SCRIBBLE_FOREGROUND)]
    if bad:
        raise ValueError(f"scribbles must hold only 0 (unlabelled), 1 (background), 2 (foreground); found {bad}.")
    mask = scr > SCRIBBLE_UNLABELLED
    x = features.reshape(features.shape[0], -1)[:, mask.ravel()].T
    y = (scr[mask] == SCRIBBLE_FOREGROUND).astype(np.uint8)
    return x, y


def train_scribble_forest(
    images,
    scribbles,
    features: PixelFeatures | None = None,
    n_estimators: int = 10,
    max_depth: int | None = None,
    seed: int = 0,
    n_jobs: int = -1,
    precomputed_features: Sequence | None = None,
    **forest_kwargs,
) -> RandomForestClassifier:
    """Train the target forest from brushstrokes (0 = unlabelled, 1 = background, 2 = foreground).

    Args:
        images: one image or a list (arrays ``(H, W)``/``(1, *spatial)`` or file paths). Images without any
            scribble are skipped (their features are not even computed).
        scribbles: matching scribble maps (arrays or label files, e.g. MONAI Label's saved scribbles).
        features: the feature transform (default: ilastik set).
        n_estimators: trees; as many as each source forest (``train_source_forests``' default, 10), because the
            Prediction Enhancer learned on those forests' maps: a 100-tree forest (ilastik's default) gives a less
            certain map that it over-segments (``docs/benchmarks/s2d_diagnosis/``).
        max_depth, forest_kwargs: passed to ``RandomForestClassifier``.
        seed: forest random state.
        n_jobs: threads for the per-image features and cores for fitting the trees (``-1`` = all).
        precomputed_features: optional list of ``(F, *spatial)`` features matching ``images`` (skips computing).

    Returns:
        The fitted forest (classes ``{0, 1}``), with ``s2d_n_train_`` = number of scribbled pixels used and
        ``s2d_timing_ = {"features_s", "fit_s"}`` (seconds spent computing features / fitting).
    """
    scribble_list = _as_list(scribbles)
    n = len(scribble_list)
    image_list = _as_list(images) if images is not None else [None] * n
    if len(image_list) != n:
        raise ValueError(f"got {len(image_list)} images but {n} scribble maps.")
    if precomputed_features is not None and len(precomputed_features) != n:
        raise ValueError(f"got {len(precomputed_features)} precomputed features but {n} scribble maps.")
    features = features or PixelFeatures()

    def rows(k: int):
        scr = load_single_channel(scribble_list[k], f"scribbles[{k}]")
        if not np.any(scr > 0):
            return None
        if precomputed_features is not None:
            feats = precomputed_features[k]
        else:
            img = load_single_channel(image_list[k], f"images[{k}]")
            if img.shape != scr.shape:
                raise ValueError(f"images[{k}] has shape {img.shape} but scribbles[{k}] has shape {scr.shape}.")
            feats = features(img)
        return scribble_training_set(feats, scr)  # the full feature stack is dropped right away

    t0 = time.perf_counter()
    # threads: scipy filtering partly releases the GIL; only one feature stack per thread is alive
    parts = Parallel(n_jobs=n_jobs, backend="threading")(delayed(rows)(k) for k in range(n))
    parts = [r for r in parts if r is not None]
    xs, ys = [r[0] for r in parts], [r[1] for r in parts]
    if not xs:
        raise ValueError("no scribbled pixel (value 1 or 2) in any scribble map.")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if np.unique(y).size < 2:
        raise ValueError("scribbles must contain both background (1) and foreground (2) strokes.")
    t1 = time.perf_counter()
    forest = _new_forest(n_estimators=n_estimators, max_depth=max_depth, seed=seed, n_jobs=n_jobs, **forest_kwargs)
    forest.fit(x, y)
    forest.s2d_n_train_ = int(y.size)
    forest.s2d_timing_ = {"features_s": t1 - t0, "fit_s": time.perf_counter() - t1}
    return forest


# ---------------------------------------------------------------------------------------------- persistence
def save_forests(
    path, forests: Sequence[RandomForestClassifier] | RandomForestClassifier, features: PixelFeatures
) -> Path:
    """Atomically write forests and their feature configuration (joblib; temp file + ``os.replace``)."""
    from monai_uda.utils import atomic_write

    path = Path(path)
    single = isinstance(forests, RandomForestClassifier)
    payload = {
        "format_version": _FORMAT_VERSION,
        "forests": [forests] if single else list(forests),
        "single": single,
        "feature_config": features.get_config(),
    }
    atomic_write(path, lambda tmp: joblib.dump(payload, tmp, compress=3))
    return path


def load_forests(path) -> tuple[list[RandomForestClassifier], PixelFeatures]:
    """Load what :func:`save_forests` wrote: ``(forests, feature_transform)`` (a list even for one forest)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"forest file not found: {path}")
    payload = joblib.load(path)
    if not isinstance(payload, dict) or "forests" not in payload or "feature_config" not in payload:
        raise ValueError(f"{path} is not a forest file written by save_forests.")
    return list(payload["forests"]), PixelFeatures.from_config(payload["feature_config"])


def forests_summary(path: str, spatial_dims: int = 2) -> dict[str, float]:
    """``n_forests``, ``n_trees``, ``n_features`` and ``file_mb`` of a saved source-forest file."""
    forests, feats = load_forests(path)
    return {
        "n_forests": float(len(forests)),
        "n_trees": float(sum(len(getattr(f, "estimators_", [])) for f in forests)),
        "n_features": float(feats.num_features(spatial_dims)),
        "file_mb": os.path.getsize(path) / 2**20,
    }
