"""Speed of BatchNorm re-estimation versus one no-grad inference pass over the same target data.

Run ``python -m monai_uda.benchmarks.bn_speed [--data-root DIR] [--batch-size 4]``. It loads the A1
target set (20 PNG slices of 512x512 of the Drosophila VNC ssTEM stack; 20 random images with a note
if absent), times in one run (after a one-batch warm-up) one eval-mode ``torch.no_grad`` inference
pass of a 2D ``UDAUNet`` (1 channel in, 2 out) over all images and ``reestimate_bn`` over the same
in-memory batches, interleaved ``--repeats`` times (the minimum of each is kept, which damps the
noise of a shared machine), and prints the numbers. The last line is::

    adapt_over_inference_ratio=<x> adapt_seconds=<s>

Acceptance (issue 3): ``adapt_seconds < 10`` and ratio ``<= 1.5`` on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import glob
import os
import time

import numpy as np
import torch

from monai_uda.methods.bn_reestimation.reestimation import reestimate_bn
from monai_uda.networks.unet import UDAUNet

__all__ = ["load_target_images", "time_inference", "time_adaptation", "main"]

DEFAULT_DATA_ROOT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "..",
    "shared",
    "data",
    "em_drosophila_vnc_sstem",
    "images",
)


def load_target_images(data_root: str | None, n: int = 20, size: int = 512, seed: int = 0) -> torch.Tensor:
    """``(N, 1, H, W)`` float32 images in [0, 1] from the PNG files of ``data_root``, or ``n`` random ``size``² images."""
    files = sorted(glob.glob(os.path.join(data_root, "*.png"))) if data_root and os.path.isdir(data_root) else []
    if not files:
        print(f"note: no PNG images under data_root={data_root!r}; using {n} random {size}x{size} images instead.")
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 1, size, size, generator=g)
    from PIL import Image

    imgs = [np.asarray(Image.open(f).convert("L"), dtype=np.float32) / 255.0 for f in files]
    shapes = {a.shape for a in imgs}
    if len(shapes) != 1:
        raise ValueError(f"images under {data_root} have different shapes {shapes}; expected one slice size.")
    return torch.from_numpy(np.stack(imgs)[:, None])


def time_inference(net: torch.nn.Module, batches: list[torch.Tensor]) -> float:
    """Seconds of one eval-mode ``torch.no_grad`` forward pass over ``batches``."""
    net.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            net(x)
    return time.perf_counter() - t0


def time_adaptation(net: torch.nn.Module, batches: list[torch.Tensor], mode: str = "ema", alpha: float = 0.1) -> float:
    """Seconds of ``reestimate_bn(net, batches)`` (one pass)."""
    t0 = time.perf_counter()
    reestimate_bn(net, batches, mode=mode, alpha=alpha, passes=1, progress=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=DEFAULT_DATA_ROOT, help="folder of target PNG slices (A1 target set)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--mode", default="ema", choices=["ema", "reset"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the minimum of each is reported")
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels_last memory format for network and images (oneDNN convolutions; same for both timings)",
    )
    parser.add_argument("--checkpoint", default=None, help="optional UDAUNet state_dict; random weights otherwise")
    args = parser.parse_args(argv)

    torch.set_num_threads(max(1, args.threads))
    images = load_target_images(args.data_root)
    net = UDAUNet(spatial_dims=2, in_channels=1, out_channels=2)
    if args.checkpoint:
        net.load_state_dict(torch.load(args.checkpoint, map_location="cpu"))
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    batches = [b.contiguous(memory_format=fmt) for b in images.split(args.batch_size)]
    print(
        f"target: {images.shape[0]} images of {tuple(images.shape[2:])}, batch size {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads, mode={args.mode}, channels_last={args.channels_last}"
    )

    net.eval()
    with torch.no_grad():  # warm-up (allocator, kernels), not timed
        net(batches[0])
    infer_all, adapt_all = [], []
    for _ in range(max(1, args.repeats)):  # interleaved, so that background load hits both alike
        infer_all.append(time_inference(net, batches))
        fresh = copy.deepcopy(net)
        with torch.no_grad():  # touch the copy's memory once, as the timed inference pass had
            fresh(batches[0][:1])
        adapt_all.append(time_adaptation(fresh, batches, mode=args.mode))
    infer_s, adapt_s = min(infer_all), min(adapt_all)
    ratio = adapt_s / infer_s
    print("inference runs: " + ", ".join(f"{t:.3f}" for t in infer_all) + " s")
    print("adaptation runs: " + ", ".join(f"{t:.3f}" for t in adapt_all) + " s")
    print(f"inference_seconds={infer_s:.3f}")
    print(f"adapt_seconds={adapt_s:.3f}")
    print(f"adapt_over_inference_ratio={ratio:.3f} adapt_seconds={adapt_s:.3f}")
    return ratio


if __name__ == "__main__":
    main()
