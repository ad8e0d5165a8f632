"""PNG figure of PAST's pixel alignment: source slices, their translation by the CycleGAN generator, and target
slices (Dong et al., Fig. 2 style).

Usage::

    python -m monai_uda.benchmarks.past_figure --datalist D1.json \\
        --checkpoint bundles/pixel_alignment_segmentation/models/translation/cyclegan.pt --out past_examples.png

An intensity-translator checkpoint (the bundle's default, ``train_translation.json``) records its own settings. For a
CycleGAN checkpoint (``configs/cyclegan.json``) the generator settings must match the config it was trained with
(``--g-features``, ``--n-down``, ``--n-residual``, ``--residual-output``; the defaults are ``cyclegan.json``'s: no
residual output). Only source and *target training images* are read (no target label).
"""

from __future__ import annotations

import argparse
import os
from typing import Sequence

import numpy as np
import torch

__all__ = ["figure_generator", "past_figure", "main"]


def _middle_slice(img: torch.Tensor) -> torch.Tensor:
    """(C, H, W[, D]) -> (C, H, W): the middle slice along the last axis for volumes."""
    return img[..., img.shape[-1] // 2] if img.ndim == 4 else img


def figure_generator(checkpoint: str, in_channels: int = 1, g_features: int = 16, n_down: int = 2, n_residual: int = 3,
                     residual_output: bool = False, device: str = "cpu") -> torch.nn.Module:
    """The source -> target generator of a translation checkpoint, in eval mode (see :func:`past_figure`)."""
    from monai_uda.methods.past.cyclegan_networks import CycleGAN
    from monai_uda.methods.past.past import load_generator

    gan = CycleGAN(spatial_dims=2, in_channels=in_channels, g_features=g_features, n_down=n_down,
                   n_residual=n_residual, residual_output=residual_output)
    return load_generator(gan, checkpoint).to(device).eval()


def past_figure(
    datalist: str,
    checkpoint: str,
    out: str,
    num_examples: int = 3,
    g_features: int = 16,
    n_down: int = 2,
    n_residual: int = 3,
    residual_output: bool = False,
    device: str = "cpu",
) -> str:
    """Write a ``num_examples`` x 3 grid (source / translated source / target) to ``out`` (atomically).

    Args:
        datalist: UDA datalist JSON (``source_training`` and ``target_training`` are read, images only).
        checkpoint: translation checkpoint of ``train_translation.json`` (``{"cyclegan": state}``) or a
            ``CycleGAN`` state dict.
        out: PNG path.
        num_examples: rows.
        g_features, n_down, n_residual, residual_output: the ``CycleGAN`` generator settings of a CycleGAN checkpoint
            (default: ``configs/cyclegan.json``'s); an intensity-translator checkpoint carries its own.
        device: where the generator runs.
    """
    # a pyplot-free Figure: no backend switch (Jupyter keeps its inline figures), no global figure list
    from matplotlib.figure import Figure

    from monai_uda.data.uda_data import UDAData
    from monai_uda.methods.past.cyclegan_trainer import translate_padded
    from monai_uda.utils import atomic_write
    from monai_uda.transforms.pipelines import segmentation_transforms

    uda = UDAData(datalist, deep=False)
    gen = figure_generator(checkpoint, uda.in_channels, g_features, n_down, n_residual, residual_output, device)
    tf = segmentation_transforms("target", uda=uda)
    src = uda.split("source_training")
    tgt = uda.split("target_training")
    n = min(num_examples, len(src))
    fig = Figure(figsize=(7.5, 2.5 * n))
    axes = fig.subplots(n, 3, squeeze=False)
    for row in range(n):
        s = _middle_slice(torch.as_tensor(tf({"image": src[row * len(src) // n]["image"]})["image"]))
        t = _middle_slice(torch.as_tensor(tf({"image": tgt[row * len(tgt) // n % len(tgt)]["image"]})["image"]))
        with torch.no_grad():
            y = translate_padded(gen, s[None].float().to(device))[0].cpu()
        for col, (img, title) in enumerate(((s, "source"), (y, "translated source"), (t, "target"))):
            ax = axes[row, col]
            ax.imshow(np.rot90(img[0].numpy()), cmap="gray")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=10)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, dpi=110))
    return out


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datalist", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", default="past_examples.png")
    p.add_argument("--num-examples", type=int, default=3)
    p.add_argument("--g-features", type=int, default=16)
    p.add_argument("--n-down", type=int, default=2)
    p.add_argument("--n-residual", type=int, default=3)
    p.add_argument("--residual-output", action="store_true",
                   help="a CycleGAN trained with residual_output true (cyclegan.json has false)")
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)
    path = past_figure(a.datalist, a.checkpoint, a.out, a.num_examples, a.g_features, a.n_down, a.n_residual,
                       a.residual_output, device=a.device)
    print(os.path.abspath(path))
    return path


if __name__ == "__main__":
    main()
