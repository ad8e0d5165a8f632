"""How much do the label-free validators cost next to one inference pass? (target: <= 2x)

On the embedded demo pair (generated if absent; simulated scanner shift), a few small candidates (a source model
trained for a few iterations, the same with BatchNorm statistics re-estimated on the target images, an untrained
network) are scored on the ``target_training`` images as ``monai-uda select`` scores them (same validators, same
sliding-window inferer), plus ``w2_shift``, which ``select`` runs on request. Printed per candidate: the seconds of
one plain inference pass over the images; the seconds of ``select``'s default validator set and their ratio to the
inference pass (the target: <= 2x); the same with ``w2_shift`` added; each validator's own seconds.

    python scripts/validator_speed.py [--out DIR] [--limit N] [--validators NAME ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch


def small_candidates(uda, iterations: int = 12, images: int = 8) -> dict[str, torch.nn.Module]:
    """``source`` (trained briefly on source images, exact source BatchNorm statistics), ``bn_reset`` (its BatchNorm
    statistics re-estimated on the target images) and ``untrained``."""
    from monai.losses import DiceCELoss

    from monai_uda.networks import UDAUNet
    from monai_uda.transforms import segmentation_transforms
    from monai_uda.validators.candidates import target_images

    xform = segmentation_transforms("eval", uda=uda)
    items = [xform(it) for it in uda.split("source_training", limit=images)]
    x = torch.stack([d["image"].as_tensor() for d in items])
    y = torch.stack([d["label"].as_tensor() for d in items]).long()
    torch.manual_seed(0)
    source = UDAUNet(uda.spatial_dims, uda.in_channels, uda.num_classes)
    opt, loss = torch.optim.Adam(source.parameters(), 1e-2), DiceCELoss(to_onehot_y=True, softmax=True)
    source.train()
    for _ in range(iterations):
        opt.zero_grad()
        loss(source(x), y).backward()
        opt.step()

    def exact_bn(network: torch.nn.Module, batch: torch.Tensor) -> torch.nn.Module:
        for m in network.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        network.train()
        with torch.no_grad():
            network(batch)
        return network.eval()

    exact_bn(source, x)
    adapted = UDAUNet(uda.spatial_dims, uda.in_channels, uda.num_classes)
    adapted.load_state_dict(source.state_dict())
    exact_bn(adapted, torch.stack(target_images(uda, limit=images)))
    torch.manual_seed(1)
    return {"source": source, "bn_reset": adapted, "untrained": UDAUNet(uda.spatial_dims, uda.in_channels,
                                                                        uda.num_classes).eval()}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(tempfile.gettempdir(), "monai_uda_validator_speed"),
                   help="folder of the demo pair (generated if absent)")
    p.add_argument("--limit", type=int, default=None, help="use the first N target_training images (None: all)")
    p.add_argument("--validators", nargs="+", default=None, help="validators (None: monai-uda select's default set)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="torch device")
    a = p.parse_args()
    torch.set_num_threads(a.threads)

    from monai_uda.cli import load_validator_plugins
    from monai_uda.data import UDAData
    from monai_uda.data.demo import ensure_demo_datalist
    from monai_uda.validators import VALIDATORS, score_candidates
    from monai_uda.validators.candidates import default_inferer, source_statistics, target_images
    from monai_uda.validators.predictions import predict_probabilities
    from monai_uda.validators.score import default_validators

    load_validator_plugins()
    uda = UDAData(ensure_demo_datalist(a.out), deep=False)
    images = target_images(uda, a.limit)
    stats = source_statistics(uda, limit=16)
    candidates = small_candidates(uda)
    default = default_validators(len(candidates), len(images), True, True)
    names = a.validators or default + ["w2_shift"]
    inferer = default_inferer(uda.spatial_dims)
    predict_probabilities(candidates["untrained"], images[:2], inferer, a.device)  # warm-up

    seconds: dict[tuple[str, str], float] = {}
    originals = {n: VALIDATORS[n] for n in names}

    def timed(name, fn):
        def run(candidate, **options):
            start = time.perf_counter()
            try:
                return fn(candidate, **options)
            finally:
                key = (candidate.name, name)
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
        run.needs = getattr(fn, "needs", frozenset())
        return run

    try:
        for n, fn in originals.items():
            VALIDATORS[n] = timed(n, fn)
        df = score_candidates(candidates, images, validators=names, inferer=inferer, device=a.device, progress=False,
                              source_statistics=stats)
    finally:
        VALIDATORS.update(originals)

    shape = "x".join(map(str, images[0].shape[1:]))
    print(f"demo pair (simulated shift), {len(images)} target_training images of {shape}, sliding window "
          f"{list(inferer.roi_size)}, torch {torch.__version__}, {a.threads} thread(s), {platform.processor() or '?'} "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    core = [n for n in names if n in default] if not a.validators else names
    extra = [n for n in names if n not in core]
    print(f"validators: {', '.join(core)}" + (f"; then also {', '.join(extra)}" if extra else ""))
    print(f"{'candidate':<10} {'inference_s':>11} {'validators_s':>12} {'ratio':>6}"
          + (f" {'+' + '+'.join(extra) + '_s':>14} {'ratio':>6}" if extra else "") + "   per validator (s)")
    worst = 0.0
    for name, row in df.iterrows():
        inference = row["inference_seconds"]
        spent = sum(seconds.get((name, n), 0.0) for n in core)
        total = row["validator_seconds"]  # all of them, the bookkeeping between them included
        worst = max(worst, spent / inference)
        each = ", ".join(f"{n} {seconds.get((name, n), 0.0):.2f}" for n in names)
        line = f"{name:<10} {inference:>11.2f} {spent:>12.2f} {spent / inference:>5.2f}x"
        if extra:
            line += f" {total:>14.2f} {total / inference:>5.2f}x"
        print(f"{line}   {each}")
    print(f"largest ratio of {'the default set' if not a.validators else 'the validators'} {worst:.2f}x "
          f"(target <= 2x): {'ok' if worst <= 2 else 'ABOVE TARGET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
