"""The embedded demo pair: real brain anatomy with a **simulated** scanner shift. No download.

Anatomy: the MNI ICBM152 2009a symmetric T1 template and its white-matter probability map, which
the ``nilearn`` package ships inside its wheel. Subjects are made by random affine + smooth elastic
deformations of the template (so every "subject" is a warped copy of one real brain).

Task: white-matter segmentation (label = WM probability > 0.5).

Scanners (the shift is simulated, not acquired):

- **source "scanner A"**: the template's own T1 contrast, light Gaussian noise.
- **target "scanner B"**: a different tissue contrast (a non-monotonic intensity curve that makes
  white matter darker than grey matter, as in T2-weighted-like images), a smooth multiplicative
  bias field, stronger noise and a lower resolution (Gaussian blur).

The source-only model loses well over 20 Dice points against a target-trained oracle on this
pair (measured by ``monai-uda demo``). 3D volumes are 2 mm NIfTI; the 2D version uses axial
slices of the same volumes saved as 2D NIfTI (with their 2 mm spacing).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .datalist import write_uda_datalist

__all__ = ["make_demo_pair", "ensure_demo_datalist", "DEMO_SPLITS", "scanner_a", "scanner_b"]

#: subjects per split
DEMO_SPLITS = {"source_training": 6, "source_validation": 2, "target_training": 4, "target_test": 4, "oracle_training": 4,
               "oracle_validation": 1}
_VERSION = 2  # 2: adds oracle_validation (one subject, generated last: the other splits are unchanged)
_SHAPE = (80, 96, 80)  # 2 mm grid, divisible by 16


def _nilearn_data() -> Path:
    try:
        import nilearn
    except ImportError as e:  # pragma: no cover - nilearn is a dependency
        raise ImportError("the demo pair needs the 'nilearn' package (it ships the MNI152 template)") from e
    return Path(nilearn.__file__).parent / "datasets" / "data"


def _load_template() -> tuple[np.ndarray, np.ndarray]:
    """MNI152 2009a T1 and WM probability, resampled to a 2 mm grid of shape ``_SHAPE``, in [0, 1]."""
    import nibabel as nib
    from scipy import ndimage

    d = _nilearn_data()
    t1 = np.asarray(nib.load(d / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").dataobj, dtype=np.float32)
    wm = np.asarray(nib.load(d / "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz").dataobj, dtype=np.float32)
    t1, wm = t1 / 255.0, wm / 255.0
    t1 = ndimage.zoom(t1, 0.5, order=1)
    wm = ndimage.zoom(wm, 0.5, order=1)
    # centre-crop / pad to _SHAPE around the head's bounding box
    nz = np.argwhere(t1 > 0.05)
    centre = (nz.min(0) + nz.max(0)) // 2
    out_t1 = np.zeros(_SHAPE, np.float32)
    out_wm = np.zeros(_SHAPE, np.float32)
    src, dst = [], []
    for c, n, s in zip(centre, t1.shape, _SHAPE):
        lo = int(c) - s // 2
        a, b = max(lo, 0), min(lo + s, n)
        src.append(slice(a, b))
        dst.append(slice(a - lo, b - lo))
    out_t1[tuple(dst)] = t1[tuple(src)]
    out_wm[tuple(dst)] = wm[tuple(src)]
    return out_t1, out_wm


def _random_warp(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Coordinates of a random affine (rot ±8°, scale ±8 %) + smooth elastic deformation."""
    from scipy import ndimage

    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = np.array(shape, np.float32).reshape(3, 1, 1, 1) / 2
    ang = np.deg2rad(rng.uniform(-8, 8, 3))
    cx, cy, cz = np.cos(ang)
    sx, sy, sz = np.sin(ang)
    rot = (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )
    mat = rot * rng.uniform(0.92, 1.08, 3)[None, :]
    coords = np.einsum("ij,jxyz->ixyz", mat.astype(np.float32), grid - centre) + centre
    coarse = rng.normal(0, 2.0, (3, 6, 6, 6)).astype(np.float32)  # ~2 voxel elastic displacement
    disp = np.stack([ndimage.zoom(c, np.array(shape) / 6, order=1) for c in coarse])
    return coords + disp


def _warp(vol: np.ndarray, coords: np.ndarray, order: int = 1) -> np.ndarray:
    from scipy import ndimage

    return ndimage.map_coordinates(vol, coords, order=order, mode="constant", cval=0.0).astype(np.float32)


def scanner_a(t1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Source "scanner A": the template's T1 contrast with light noise."""
    return np.clip(t1 + rng.normal(0, 0.02, t1.shape).astype(np.float32), 0, None)


def scanner_b(t1: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Target "scanner B": inverted-looking tissue contrast, bias field, noise and blur.

    The intensity curve maps T1 intensity t (CSF ~0.2, GM ~0.5, WM ~0.75 in the template) through
    a bump that peaks between CSF and GM, so WM comes out darker than GM; the background stays dark.
    """
    from scipy import ndimage

    head = t1 > 0.06
    curve = np.exp(-(((t1 - 0.38) / 0.22) ** 2)) * head
    # smooth multiplicative bias field from a few random low-frequency components
    coarse = rng.normal(0, 0.25, (4, 4, 4)).astype(np.float32)
    bias = np.exp(ndimage.zoom(coarse, np.array(t1.shape) / 4, order=1))
    img = curve * bias * rng.uniform(0.8, 1.2)
    img = ndimage.gaussian_filter(img, sigma=rng.uniform(0.8, 1.2))  # lower resolution
    img = img + rng.normal(0, 0.05, img.shape)
    return np.clip(img, 0, None).astype(np.float32)


def _save_nifti(arr: np.ndarray, path: Path, spacing: tuple[float, ...], dtype=np.float32) -> None:
    import nibabel as nib

    affine = np.diag(list(spacing) + [1.0] * (4 - len(spacing)))
    if arr.ndim == 2:
        affine = np.diag([spacing[0], spacing[1], 1.0, 1.0])
    from monai_uda.utils import atomic_write

    atomic_write(path, lambda tmp: nib.save(nib.Nifti1Image(arr.astype(dtype), affine), tmp))


def make_demo_pair(out_dir: str | os.PathLike, spatial_dims: int = 2, seed: int = 0, slices_per_subject: int = 12,
                   splits: dict[str, int] | None = None) -> str:
    """Generate the demo pair in ``out_dir`` and return the datalist path (``datalist_{2,3}d.json``).

    Args:
        out_dir: output folder.
        spatial_dims: 2 (axial slices as 2D NIfTI) or 3 (volumes).
        seed: random seed (subjects and scanner effects are deterministic given the seed).
        slices_per_subject: 2D only, evenly spaced axial slices through the central part of the brain.
        splits: number of subjects per datalist key (default :data:`DEMO_SPLITS`).
    """
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    splits = dict(splits or DEMO_SPLITS)
    out = Path(out_dir)
    (out / f"{spatial_dims}d").mkdir(parents=True, exist_ok=True)
    t1, wm = _load_template()
    rng = np.random.default_rng(seed)
    dl: dict[str, Any] = {
        "name": "demo",
        "description": "MNI152 anatomy, white matter; SIMULATED scanner shift (A: T1 contrast -> B: "
        "T2-like contrast + bias field + noise + blur)",
        "spatial_dims": spatial_dims,
        "in_channels": 1,
        "labels": {"0": "background", "1": "white matter"},
        "setting": "inductive",
        "surface_tolerance": 2.0,
        "spacing_unit": "mm",
        "demo_version": _VERSION,
    }
    z_lo, z_hi = int(_SHAPE[2] * 0.3), int(_SHAPE[2] * 0.75)
    zs = np.linspace(z_lo, z_hi, slices_per_subject).astype(int)
    subj = 0
    for key, n in splits.items():
        items = []
        for _ in range(n):
            coords = _random_warp(rng, _SHAPE)
            t1_s = _warp(t1, coords)
            lab = (_warp(wm, coords) > 0.5).astype(np.uint8)
            scanner = "A" if key.startswith("source") else "B"
            img = scanner_a(t1_s, rng) if scanner == "A" else scanner_b(t1_s, rng)
            stem = f"sub{subj:03d}_{scanner}"
            subj += 1
            d = out / f"{spatial_dims}d"
            if spatial_dims == 3:
                ip, lp = d / f"{stem}_img.nii.gz", d / f"{stem}_seg.nii.gz"
                _save_nifti(img, ip, (2.0, 2.0, 2.0))
                _save_nifti(lab, lp, (2.0, 2.0, 2.0), np.uint8)
                pairs = [(ip, lp)]
            else:
                pairs = []
                for z in zs:
                    ip, lp = d / f"{stem}_z{z:02d}_img.nii.gz", d / f"{stem}_z{z:02d}_seg.nii.gz"
                    _save_nifti(img[:, :, z], ip, (2.0, 2.0))
                    _save_nifti(lab[:, :, z], lp, (2.0, 2.0), np.uint8)
                    pairs.append((ip, lp))
            for ip, lp in pairs:
                it = {"image": os.path.relpath(ip, out)}
                if key != "target_training":
                    it["label"] = os.path.relpath(lp, out)
                items.append(it)
        dl[key] = items
    return write_uda_datalist(dl, out / f"datalist_{spatial_dims}d.json")


def ensure_demo_datalist(out_dir: str | os.PathLike, spatial_dims: int = 2, seed: int = 0) -> str:
    """Return the demo datalist in ``out_dir``, generating the pair first if it is absent or stale."""
    path = Path(out_dir) / f"datalist_{spatial_dims}d.json"
    if path.is_file():
        try:
            with open(path) as f:
                dl = json.load(f)
            if dl.get("demo_version") == _VERSION and all(
                (path.parent / it["image"]).is_file() for it in dl.get("target_test", [])
            ):
                return str(path)
        except (json.JSONDecodeError, KeyError):
            pass
    return make_demo_pair(out_dir, spatial_dims=spatial_dims, seed=seed)
