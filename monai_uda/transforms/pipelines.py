"""Ready-made MONAI transform chains for UDA segmentation, 2D patches and 3D volumes.

Everything here is composed from MONAI transforms; only channel matching and the NaN check are ours.

- 2D (PNG/TIFF/2D NIfTI): load, channel-first, grey/RGB matched to ``in_channels``, labels mapped
  to classes (``label_map``) or binarised (instance maps, ``binarize``), per-image z-score.
- 3D (NIfTI): as 2D plus RAS orientation and resampling to ``pixdim`` when given; z-score over
  the non-zero (foreground) voxels, the usual MRI choice.

Stages: ``"train"`` (random crops of ``roi_size`` balanced between foreground and background,
flips/rotations), ``"eval"`` (whole images with labels), ``"infer"``/``"target"`` (images only).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from monai.transforms import (
    AsDiscreted,
    Compose,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapLabelValued,
    NormalizeIntensityd,
    Orientationd,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandSpatialCropSamplesd,
    SpatialPadd,
    Spacingd,
)

from .check_finite import CheckFinited
from .match_channels import MatchChannelsd

__all__ = ["segmentation_transforms", "load_transforms"]

STAGES = ("train", "eval", "infer", "target")


def _uda_kwargs(uda: Any) -> dict[str, Any]:
    if uda is None:
        return {}
    return {
        "spatial_dims": uda.spatial_dims,
        "in_channels": uda.in_channels,
        "label_map": uda.label_map,
        "binarize": uda.binarize,
        "pixdim": uda.pixdim,
    }


def load_transforms(
    keys: Sequence[str],
    spatial_dims: int = 2,
    in_channels: int = 1,
    label_key: str | None = "label",
    label_map: Mapping[int, int] | None = None,
    binarize: bool = False,
    pixdim: Sequence[float] | None = None,
    image_key: str = "image",
    nonzero: bool | None = None,
) -> list:
    """Loading, channel, label and intensity transforms shared by every stage."""
    keys = list(keys)
    xs: list = [
        LoadImaged(keys=keys, image_only=True),
        EnsureChannelFirstd(keys=keys),
        MatchChannelsd(keys=image_key, channels=in_channels),
        CheckFinited(keys=image_key),
    ]
    if spatial_dims == 3:
        xs.append(Orientationd(keys=keys, axcodes="RAS"))
        if pixdim is not None:
            modes = ["bilinear" if k == image_key else "nearest" for k in keys]
            xs.append(Spacingd(keys=keys, pixdim=pixdim, mode=modes))
    if label_key is not None and label_key in keys:
        if label_map:
            orig = sorted(int(k) for k in label_map)
            xs.append(MapLabelValued(keys=label_key, orig_labels=orig, target_labels=[int(label_map[k]) for k in orig]))
        if binarize:
            xs.append(AsDiscreted(keys=label_key, threshold=0.5))
    nz = (spatial_dims == 3) if nonzero is None else nonzero
    xs.append(NormalizeIntensityd(keys=image_key, nonzero=nz, channel_wise=True))
    xs.append(EnsureTyped(keys=keys, dtype=None, track_meta=True))
    return xs


def segmentation_transforms(
    stage: str = "train",
    uda: Any = None,
    spatial_dims: int | None = None,
    in_channels: int | None = None,
    roi_size: Sequence[int] | None = None,
    num_samples: int = 4,
    pos_fraction: float = 0.5,
    label_map: Mapping[int, int] | None = None,
    binarize: bool | None = None,
    pixdim: Sequence[float] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    augment: bool = True,
) -> Compose:
    """Build the transform chain for one stage.

    Args:
        stage: ``"train"``, ``"eval"``, ``"infer"`` or ``"target"`` (unlabelled target images; same as infer).
        uda: a :class:`monai_uda.data.UDAData`; supplies dims, channels, label mapping and spacing.
            Explicit arguments override it.
        roi_size: training crop size (each side divisible by 16 for ``UDAUNet``).
        num_samples: crops per image per iteration (``"train"``).
        pos_fraction: fraction of crops centred on foreground (``"train"``).
        augment: random flips and 90-degree rotations in ``"train"``.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    kw = _uda_kwargs(uda)
    spatial_dims = spatial_dims or kw.get("spatial_dims", 2)
    in_channels = in_channels or kw.get("in_channels", 1)
    label_map = label_map if label_map is not None else kw.get("label_map")
    binarize = binarize if binarize is not None else kw.get("binarize", False)
    pixdim = pixdim if pixdim is not None else kw.get("pixdim")
    labelled = stage in ("train", "eval")
    keys = [image_key, label_key] if labelled else [image_key]
    xs = load_transforms(
        keys,
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        label_key=label_key if labelled else None,
        label_map=label_map,
        binarize=binarize,
        pixdim=pixdim,
        image_key=image_key,
    )
    if stage == "train":
        if roi_size is None:
            roi_size = [128] * spatial_dims if spatial_dims == 2 else [64] * 3
        roi_size = list(roi_size)
        xs.append(SpatialPadd(keys=keys, spatial_size=roi_size))
        if pos_fraction > 0:
            xs.append(
                RandCropByPosNegLabeld(
                    keys=keys,
                    label_key=label_key,
                    spatial_size=roi_size,
                    pos=pos_fraction,
                    neg=1.0 - pos_fraction,
                    num_samples=num_samples,
                    allow_smaller=False,
                )
            )
        else:
            xs.append(RandSpatialCropSamplesd(keys=keys, roi_size=roi_size, num_samples=num_samples, random_size=False))
        if augment:
            axes = list(range(spatial_dims))
            for a in axes:
                xs.append(RandFlipd(keys=keys, prob=0.5, spatial_axis=a))
            xs.append(RandRotate90d(keys=keys, prob=0.5, spatial_axes=(0, 1)))
    return Compose(xs)
