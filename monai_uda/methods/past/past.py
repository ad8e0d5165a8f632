"""PAST pipeline pieces that the ``pixel_alignment_segmentation`` bundle configs call (Dong et al., Algorithm 1).

- :func:`translation_dataset` (line 2, data): unpaired 2D slices/patches of the source and target training
  images (the paper trains its translation network on 2D transverse slices), for the translator's trainer
  (:class:`monai_uda.methods.past.intensity_translator.IntensityTranslatorTrainer`, the default, or
  :class:`monai_uda.methods.past.cyclegan_trainer.CycleGANTrainer`).
- :func:`load_generator`: the trained translator's source -> target generator, whichever translator the
  checkpoint holds.
- :func:`translate_datalist` (line 3): translates the labelled source images with the trained generator
  (:func:`monai_uda.methods.past.cyclegan_trainer.translate_volume`, slice-wise, affine kept, atomic writes) and
  writes a UDA datalist whose source lists point at the translated images and the *real source labels*; the
  target lists are unchanged. Optional ROI cropping (Sec. 2.2) crops every image and label of the pair the same way.
- :func:`init_from_source` (line 4): the segmenter trained on ``(X^_s, y_s)`` starts from the source model
  (``train.json: init_from_source``, a CPU-budget choice; the paper does not say).
- Lines 5-11, the top-q self-training rounds, are a configuration of the self-training engine
  (:class:`monai_uda.engines.self_training.SelfTraining`, ``self_train.json``): in round ``k`` the previous
  model labels ``X_c = {X^_s; X_t}`` (:func:`self_training_items`) keeping the top ``q_k`` pixels per class
  (:class:`monai_uda.methods.past.top_q.TopQSelector`), and ``S_k <- S_{k-1}`` is fine-tuned on them by the
  engine's round trainer with the loss :class:`monai_uda.losses.PseudoLabelDiceCELoss`;
  :func:`labelled_source_items` is the translated source with real labels of the ``"real"`` variant.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose, RandSpatialCropd, SpatialPadd, SqueezeDimd
from tqdm import tqdm

from monai_uda.methods.past.top_q import roi_box
from monai_uda.utils import atomic_write

__all__ = [
    "aligned_training_transforms",
    "init_from_source",
    "target_intensity_stats",
    "self_training_items",
    "labelled_source_items",
    "crop_roi_file",
    "load_generator",
    "translation_dataset",
    "translate_datalist",
]

logger = logging.getLogger(__name__)

_IMAGE_EXT = (".nii.gz", ".nii", ".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def load_generator(generator: torch.nn.Module, checkpoint: str, key: str = "cyclegan", attr: str = "g_st") -> torch.nn.Module:
    """Load a translation checkpoint into ``generator`` (a ``CycleGAN``, an ``IntensityTranslator`` or a bare generator)
    and return its ``attr`` (the source -> target generator).

    ``checkpoint`` may hold ``{key: state}`` (the bundle's saver), a translator's state dict or a generator's.
    A checkpoint of an :class:`~monai_uda.methods.past.intensity_translator.IntensityTranslator` records its
    architecture, so it is loaded into a new translator of that architecture (on ``generator``'s device) whatever
    ``generator`` is: the translate step and the figure work with either translator.

    Raises:
        FileNotFoundError: no checkpoint.
        ValueError: a CycleGAN checkpoint given an ``IntensityTranslator`` (translate with the config layers the
            translator was trained with, e.g. ``configs/cyclegan.json``).
    """
    from monai_uda.methods.past.intensity_translator import IntensityTranslator

    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"translation checkpoint {checkpoint!r} not found (run train_translation.json first).")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
        state = state[key]
    spec = state.get("_extra_state") if isinstance(state, dict) else None
    if isinstance(spec, dict) and spec.get("class") == "IntensityTranslator":
        if not isinstance(generator, IntensityTranslator) or generator.kwargs != spec.get("kwargs"):
            ref = next(iter(list(generator.parameters()) + list(generator.buffers())), None)
            generator = IntensityTranslator(**spec["kwargs"]).to(ref.device if ref is not None else "cpu")
    elif isinstance(generator, IntensityTranslator):
        raise ValueError(f"{checkpoint} holds a CycleGAN, not an IntensityTranslator: translate with the configs it "
                         "was trained with (layer configs/cyclegan.json on train_translation.json and translate.json).")
    generator.load_state_dict(state)
    return getattr(generator, attr, generator)


def init_from_source(
    network: torch.nn.Module,
    enabled: bool,
    checkpoint: str | None,
    source_dir: str,
    datalist: str,
    dataset_dir: str | None = None,
    distributed: bool = False,
    **source_overrides: Any,
) -> str | None:
    """Start the segmenter of Algorithm 1, line 4 (``S`` trained on ``(X^_s, y_s)``) from the source model.

    The paper trains ``S`` on the translated source and does not say from which weights (nnU-Net trains from
    scratch); starting from the source model is this toolkit's budget choice for the CPU (``train.json``:
    ``init_from_source``), ``enabled=False`` trains from scratch as before.

    Args:
        network: the segmenter (``train.json``'s ``network``; a DDP wrapper is unwrapped); loaded in place.
        enabled: False: do nothing (training from scratch).
        checkpoint: a source model; None: ``source_dir/model.pt`` of the ``source_segmentation`` bundle, trained with
            ``source_overrides`` if absent or made with other settings
            (:func:`monai_uda.bundle.resolve_source_checkpoint`).
        source_dir: where that source model lives.
        datalist: the *original* (untranslated) datalist: the source model must have been trained on its source images.
        dataset_dir: its base folder.
        distributed: under ``torchrun``: rank 0 resolves (and, if needed, trains in an isolated process) the source
            model while the others wait; every rank then loads it.
        source_overrides: the source training's settings (seed, budget, device, ...), as the runner's source model;
            its ``device`` (default CPU) is also where the weights are loaded.

    Returns:
        the checkpoint loaded, or None when ``enabled`` is False.
    """
    if not enabled:
        return None
    from monai_uda.bundle import load_network, resolve_source_checkpoint
    from monai_uda.data import UDAData
    from monai_uda.distributed import on_rank0, unwrap

    kw = dict(source_overrides, datalist=datalist, dataset_dir=dataset_dir)
    if distributed:
        path = on_rank0(resolve_source_checkpoint, checkpoint, source_dir, isolate=True, **kw)
    else:
        path = resolve_source_checkpoint(checkpoint, source_dir, **kw)
    load_network(unwrap(network), path, source_overrides.get("device", "cpu"), uda=UDAData(datalist, dataset_dir, deep=False))
    logger.info("PAST: the segmenter starts from the source model %s", path)
    return path


# ------------------------------------------------------------------------------------- translation data


class _Pick:
    """``d[key]`` as a plain tensor (an :class:`UnpairedDataset` item must be a tensor)."""

    def __init__(self, key: str = "image") -> None:
        self.key = key

    def __call__(self, d: Any) -> torch.Tensor:
        d = d[0] if isinstance(d, list) else d
        return torch.as_tensor(d[self.key]).float()


def translation_dataset(
    uda: Any,
    patch_size: Sequence[int] = (64, 64),
    source_key: str = "source_training",
    target_key: str = "target_training",
    data_limit: int | None = None,
    roi_fractions: Sequence[Sequence[float]] | None = None,
    cache: bool = True,
    seed: int = 0,
    pad_mode: str = "edge",
) -> torch.utils.data.Dataset:
    """Unpaired ``{"source": (1, H, W), "target": (1, H, W)}`` 2D training items for the translation network.

    Each image goes through ``segmentation_transforms("target", uda=uda)`` (loading, channels, RAS and spacing
    for 3D, the same z-score as segmentation); a 3D volume then gives one random axial slice (array axis 2,
    the axis :func:`translate_datalist` translates along); an optional ROI crop (``roi_fractions`` of the 2D
    slice, e.g. the paper's ``((0.25, 0.75), (0.25, 0.75))``); finally a random ``patch_size`` crop (padded
    when the slice is smaller). Only the *images* of ``source_key``/``target_key`` are read.

    Args:
        uda: a :class:`monai_uda.data.UDAData`.
        patch_size: 2D patch size (divisible by ``2**n_down`` of the generator).
        source_key: labelled source list (its labels are not loaded).
        target_key: unlabelled target list.
        data_limit: use only the first items of each list.
        roi_fractions: optional 2D ROI as ``(start, end)`` fractions per axis.
        cache: cache the deterministic loading in memory (MONAI ``CacheDataset``).
        seed: seed of the random source/target pairing.
        pad_mode: how a slice smaller than ``patch_size`` is padded (``numpy.pad`` modes). ``"edge"`` (default)
            repeats the border, i.e. the background of a head image; ``"constant"`` pads with 0, which after
            the z-score is a mid-grey frame of the same value in both domains: a pixel-wise translator would
            have to map 0 to 0 and the discriminator reads the frame as a tell.
    """
    from monai.data import CacheDataset

    from monai_uda.methods.past.top_q import roi_crop_transform
    from monai_uda.methods.past.cyclegan_trainer import UnpairedDataset
    from monai_uda.transforms.pipelines import segmentation_transforms

    patch_size = [int(p) for p in patch_size]
    if len(patch_size) != 2:
        raise ValueError(f"patch_size must be 2D (translation is slice-wise), got {patch_size}.")
    xs = list(segmentation_transforms("target", uda=uda).transforms)
    if uda.spatial_dims == 3:
        xs += [RandSpatialCropd(keys="image", roi_size=[-1, -1, 1], random_size=False), SqueezeDimd(keys="image", dim=3)]
    if roi_fractions is not None:
        xs.append(roi_crop_transform("image", [tuple(f) for f in roi_fractions]))
    xs += [SpatialPadd(keys="image", spatial_size=patch_size, mode=pad_mode), RandSpatialCropd(keys="image", roi_size=patch_size, random_size=False)]
    transform = Compose(xs)

    def images(key: str) -> list[dict]:
        return [{"image": it["image"]} for it in uda.split(key, limit=data_limit)]

    def ds(items: list[dict]) -> torch.utils.data.Dataset:
        return CacheDataset(items, transform, progress=False) if cache else Dataset(items, transform)

    return UnpairedDataset(ds(images(source_key)), ds(images(target_key)), _Pick(), _Pick(), seed=seed)


# ------------------------------------------------------------------------------------------- translation


def target_intensity_stats(
    uda: Any, key: str = "target_training", nonzero: bool | None = None, data_limit: int | None = None
) -> tuple[float, float]:
    """Mean and standard deviation of the ``key`` images (each image's own, averaged over the images; non-zero voxels
    in 3D by default, as the z-score of the segmentation pipeline). Images only; all channels pooled."""
    import nibabel as nib

    nz = uda.spatial_dims == 3 if nonzero is None else nonzero
    means, stds = [], []
    for it in uda.split(key, limit=data_limit):
        path = it["image"]
        if path.lower().endswith((".nii", ".nii.gz")):
            a = np.asarray(nib.load(path).dataobj, dtype=np.float64)
        else:
            from skimage import io

            a = io.imread(path).astype(np.float64)
        v = a[a != 0] if nz and np.any(a != 0) else a
        means.append(float(v.mean()))
        stds.append(float(v.std()))
    if not means:
        raise ValueError(f"target_intensity_stats: the datalist has no {key!r} images.")
    std = float(np.mean(stds))
    return float(np.mean(means)), std if std > 0 else 1.0


def crop_roi_file(path_in: str, path_out: str, fractions: Sequence[Sequence[float]]) -> str:
    """Crop an image file to the relative ROI ``fractions`` (:func:`monai_uda.methods.past.top_q.roi_box`) and
    write it atomically; NIfTI keeps a correct affine (``nibabel`` slicing), PNG/TIFF are cropped arrays."""
    if path_in.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        img = nib.load(path_in)
        start, end = roi_box(img.shape[: len(fractions)], fractions)
        out = img.slicer[tuple(slice(a, b) for a, b in zip(start, end))]
        return atomic_write(path_out, lambda tmp: nib.save(out, tmp))
    from skimage import io

    arr = io.imread(path_in)
    start, end = roi_box(arr.shape[:2], fractions)
    arr = arr[start[0] : end[0], start[1] : end[1]]
    return atomic_write(path_out, lambda tmp: io.imsave(tmp, arr, check_contrast=False))


def _out_name(i: int, path: str) -> str:
    return f"{i:05d}_{os.path.basename(path)}"


def translate_datalist(
    generator: torch.nn.Module,
    uda: Any,
    out_dir: str,
    keys: Sequence[str] = ("source_training", "source_validation"),
    roi_fractions: Sequence[Sequence[float]] | None = None,
    data_limit: int | None = None,
    axis: int = 2,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    progress: bool | None = None,
    distributed: bool = False,
    output_intensity: str = "target",
) -> str:
    """Translate the source images of a UDA datalist and write ``<out_dir>/datalist.json`` (Algorithm 1, line 3).

    The returned datalist is the input's (same classes, label mapping, spacing, target lists) with the
    images of ``keys`` replaced by their translations ``<out_dir>/<key>/NNNNN_<name>`` and their *source
    labels* kept. With ``roi_fractions`` (the paper's ROI, Sec. 2.2) every image and label of the pair is
    cropped first (cropped copies of the target lists are written too), so training, self-training and
    evaluation all run on the ROI. Existing translations are reused unless ``overwrite`` (resumable);
    every file and the datalist are written atomically.

    Args:
        generator: the source->target generator (e.g. ``CycleGAN.g_st``), 2D.
        uda: a :class:`monai_uda.data.UDAData` of the original pair.
        out_dir: output folder.
        keys: labelled source lists to translate.
        roi_fractions: optional ROI fractions per array axis (2 for 2D images, 3 for volumes).
        data_limit: translate only the first items of each list (the others are dropped from the datalist).
        axis: slice axis of 3D volumes.
        device: where the generator runs.
        overwrite: re-translate files that already exist.
        progress: tqdm bar. None: shown when this module's logger is enabled for INFO (a ``python -m monai.bundle
            run`` with the bundle's ``logging.conf``, ``monai-uda ... -v``), hidden in ``monai-uda demo``'s
            default output (one bar per stage).
        distributed: multi-GPU (process group initialised, every rank calls this): the images are split
            round-robin across the ranks (rank ``r`` translates/crops files ``r, r + W, ...``), then rank 0
            writes the datalist once every rank has finished; every rank returns its path.
        output_intensity: the intensity scale of the written files. The generator works on z-scored images;
            ``"target"`` (default) maps its output to the mean and standard deviation of the target training
            images (their average over images, non-zero voxels in 3D), so a translated file looks like a file
            of the target scanner; ``"source"`` maps it back to each input's own mean and std (the former
            behaviour). The segmentation pipeline z-scores every image, so the scale does not change what the
            segmenter sees (``tests/methods/past/test_translate_volume.py``); only the files differ.

    Returns:
        the path of the translated datalist.
    """
    from monai_uda.methods.past.cyclegan_trainer import translate_volume

    out_dir = os.path.abspath(out_dir)
    dl = uda.datalist
    for k in ("source_training", "source_validation", "target_training", "target_test", "oracle_training"):
        if k in dl and data_limit:
            dl[k] = dl[k][:data_limit]
    nonzero = uda.spatial_dims == 3
    if output_intensity not in ("target", "source"):
        raise ValueError(f"output_intensity must be 'target' or 'source', got {output_intensity!r}.")
    output_stats = target_intensity_stats(uda, nonzero=nonzero, data_limit=data_limit) if output_intensity == "target" else None
    jobs = [(k, i, it) for k in keys if k in dl for i, it in enumerate(dl[k])]
    if not jobs:
        raise ValueError(f"translate_datalist: the datalist has no items under {list(keys)}.")
    rank, world = 0, 1
    if distributed:
        from monai_uda.distributed import get_rank, get_world_size

        rank, world = get_rank(), get_world_size()
    counter = iter(range(10**12))  # files in a fixed order on every rank: file j is rank (j % world)'s

    def mine() -> bool:
        return next(counter) % world == rank

    if progress is None:
        progress = logging.getLogger(__name__).isEnabledFor(logging.INFO)
    for k, i, it in tqdm(jobs, desc="translate source", disable=not progress or rank > 0):
        src = it["image"]
        out = os.path.join(out_dir, k, _out_name(i, src))
        if mine() and (overwrite or not os.path.isfile(out)):
            if roi_fractions is not None:
                cropped = os.path.join(out_dir, ".roi", k, _out_name(i, src))
                src = crop_roi_file(src, cropped, roi_fractions)
            translate_volume(generator, src, out, axis=axis, device=device, nonzero=nonzero, output_stats=output_stats)
        it["image"] = out
        if roi_fractions is not None and "label" in it:
            lab = os.path.join(out_dir, k, "labels", _out_name(i, it["label"]))
            if mine() and (overwrite or not os.path.isfile(lab)):
                crop_roi_file(it["label"], lab, roi_fractions)
            it["label"] = lab
    if roi_fractions is not None:  # the other lists live in the ROI too
        for k in dl:
            if k in keys or not isinstance(dl[k], list):
                continue
            for i, it in enumerate(dl[k]):
                for field in ("image", "label"):
                    if field in it:
                        dst = os.path.join(out_dir, k, field, _out_name(i, it[field]))
                        if mine() and (overwrite or not os.path.isfile(dst)):
                            crop_roi_file(it[field], dst, roi_fractions)
                        it[field] = dst
    dl["name"] = f"{dl.get('name', 'pair')}_translated"
    dl["translated_from"] = os.path.abspath(uda.path)
    dl["roi_fractions"] = None if roi_fractions is None else [list(f) for f in roi_fractions]
    path = os.path.join(out_dir, "datalist.json")

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(dl, f, indent=2)

    if distributed:  # all files exist once every rank got here; rank 0 writes the datalist, all return it
        from monai_uda.distributed import barrier, on_rank0

        barrier()
        return on_rank0(atomic_write, path, write)
    return atomic_write(path, write)


# ------------------------------------------------------------------------------------------ self-training


def self_training_items(
    uda: Any,
    translated_source_labels: str = "pseudo",
    train_key: str = "source_training",
    target_key: str = "target_training",
    data_limit: int | None = None,
) -> list[dict]:
    """The images PAST pseudo-labels (Algorithm 1, line 5): ``X_c = {X^_s; X_t}`` (``"pseudo"``) or ``X_t``
    (``"real"``).

    Only the ``"image"`` key is kept: translated-source and target items must collate together, and datalist
    extras such as a 2D item's ``"spacing"`` exist on one kind only.

    Args:
        uda: the *translated* pair (:class:`monai_uda.data.UDAData` of ``translate.json``'s datalist).
        translated_source_labels: ``"pseudo"`` (Algorithm 1: the translated source is pseudo-labelled too) or
            ``"real"`` (it is trained with its real labels, :func:`labelled_source_items`).
        train_key: the translated source list.
        target_key: the unlabelled target list.
        data_limit: only the first items of each list.

    Raises:
        ValueError: an unknown mode, or target items that carry labels (target labels are for evaluation only).
    """
    if translated_source_labels not in ("pseudo", "real"):
        raise ValueError(f"translated_source_labels must be 'pseudo' or 'real', got {translated_source_labels!r}.")
    target = uda.split(target_key, limit=data_limit)
    if any("label" in it for it in target):
        raise ValueError("target items must not carry labels (target labels are for evaluation only).")
    if not target:
        raise ValueError(f"the datalist has no {target_key!r} items to self-train on.")
    source = uda.split(train_key, limit=data_limit) if translated_source_labels == "pseudo" else []
    return [{"image": it["image"]} for it in source] + [{"image": it["image"]} for it in target]


def labelled_source_items(
    uda: Any,
    translated_source_labels: str = "pseudo",
    train_key: str = "source_training",
    data_limit: int | None = None,
) -> list[dict]:
    """The translated source items trained with their real labels every round: all of them in ``"real"`` mode,
    none in ``"pseudo"`` mode (Algorithm 1, where they are pseudo-labelled like the target)."""
    if translated_source_labels not in ("pseudo", "real"):
        raise ValueError(f"translated_source_labels must be 'pseudo' or 'real', got {translated_source_labels!r}.")
    return [dict(it) for it in uda.split(train_key, limit=data_limit)] if translated_source_labels == "real" else []


# ------------------------------------------------------------------------------- cheap alignment baselines


class _TargetReference:
    """Array transform of a loaded target reference as the pipeline treats target images: channels matched
    to the network's (e.g. an RGB target of a grey source turned grey), RAS orientation (3D), z-score."""

    def __init__(self, spatial_dims: int, channels: int = 1) -> None:
        from monai.transforms import NormalizeIntensity, Orientation

        from monai_uda.transforms.match_channels import MatchChannels

        self.spatial_dims = spatial_dims
        self.match = MatchChannels(channels)
        self.orient = Orientation(axcodes="RAS") if spatial_dims == 3 else None
        self.norm = NormalizeIntensity(nonzero=spatial_dims == 3, channel_wise=True)

    def __call__(self, img: Any) -> Any:
        img = self.match(img)
        if self.orient is not None:
            img = self.orient(img)
        return self.norm(img)


def aligned_training_transforms(
    alignment: str,
    uda: Any,
    roi_size: Sequence[int] | None = None,
    num_samples: int = 4,
    beta: float | Sequence[float] = (0.01, 0.09),
    prob: float = 1.0,
    data_limit: int | None = None,
) -> Compose:
    """``segmentation_transforms("train", uda=uda)`` with a training-free pixel alignment of every source
    image to a randomly drawn *target training image* (images only), inserted right after the z-score:

    - ``"fda"``: :class:`monai_uda.methods.past.fourier_domain_adaptation.RandFourierDomainAdaptationd`
      (Yang & Soatto 2020, low-frequency amplitude swap, ``beta`` fixed or drawn from a range);
    - ``"histmatch"``: :class:`monai_uda.methods.past.histogram_matching.RandHistogramMatchingd`.

    Use it as ``train#preprocessing`` of the source bundle so that the segmenter is trained on aligned source.
    """
    from monai_uda.methods.past.fourier_domain_adaptation import RandFourierDomainAdaptationd
    from monai_uda.methods.past.histogram_matching import RandHistogramMatchingd
    from monai_uda.transforms.pipelines import segmentation_transforms

    refs = [it["image"] for it in uda.split("target_training", limit=data_limit)]
    ref_tf = _TargetReference(uda.spatial_dims, uda.in_channels)
    if alignment == "fda":
        align = RandFourierDomainAdaptationd(keys="image", targets=refs, beta=beta, prob=prob, target_transform=ref_tf)
    elif alignment == "histmatch":
        align = RandHistogramMatchingd(
            keys="image", references=refs, prob=prob, nonzero=uda.spatial_dims == 3, reference_transform=ref_tf
        )
    else:
        raise ValueError(f"alignment must be 'fda' or 'histmatch', got {alignment!r}.")
    base = segmentation_transforms("train", uda=uda, roi_size=roi_size, num_samples=num_samples)
    xs = list(base.transforms)
    names = [type(t).__name__ for t in xs]
    pos = names.index("NormalizeIntensityd") + 1
    return Compose(xs[:pos] + [align] + xs[pos:])
