"""Per-training-step cost of BUDA-Seg's variational Dice vs plain Dice vs MC-dropout (Li et al., Table 2).

``python -m monai_uda.benchmarks.variance_speed [--size 256 --batch 4 --steps 6 --device cpu]``

Three variants of one training step of a 2D :class:`~monai_uda.networks.unet.UDAUNet` (same backbone,
same dropout rate, Adam, a random pseudo-label):

- ``plain``: Eq. 2 on the logits (MONAI ``DiceLoss(squared_pred=True, softmax=True)``), one pass;
- ``variational``: :class:`~monai_uda.methods.buda.variance_head.VarianceUNet` + Eq. 1-3 with K samples, one pass;
- ``mcdropout``: Wu et al.'s rectified loss over T stochastic passes (all in the graph).

Time: one subprocess builds all three variants and interleaves their steps (one step of each per round,
the order rotating), so that machine noise and the allocator's state hit every variant alike; a
variant's time is the median over its timed steps (after ``--warmup`` untimed rounds). Timing each
variant alone in a fresh process instead swung by +-15 % between identical runs on this 2-core
machine (page faults of the first steps: the plain step read 0.55-0.67 s), more than the effect being
measured; that isolated time is still printed next to it.
Memory: each variant also runs alone in its own fresh subprocess so that the peak is its own: on CPU
the increase of the peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` when
allowed; otherwise ``ru_maxrss``) over the resident size before the first step; on CUDA
``torch.cuda.max_memory_allocated`` above the memory allocated before the first step.
``--repeats`` repeats the whole measurement and keeps the best of each number. One torch thread by
default (``--threads``): on a loaded 2-core machine OpenMP spin-waiting made multi-threaded steps up to
100x slower and the timings meaningless.
The last printed line is ``time_vs_plain=<x> time_vs_mcdropout=<y> memory_vs_mcdropout=<z>`` (variational
over plain / over MC-dropout).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

__all__ = ["main", "run_variant", "run_interleaved", "VARIANTS"]

VARIANTS = ("plain", "variational", "mcdropout")


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _make_step(variant: str, size: int, batch: int, device, classes: int, samples: int, dropout: float):
    """One training step of ``variant`` as a closure (its own network, optimiser and data; seed 0)."""
    import torch

    from monai_uda.methods.buda.mc_dropout import mc_dropout_train_step
    from monai_uda.methods.buda.variational_dice import VariationalSamplingDiceLoss, plain_dice_loss
    from monai_uda.networks.unet import UDAUNet
    from monai_uda.methods.buda.variance_head import VarianceUNet

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got '{variant}'.")
    torch.manual_seed(0)
    net = UDAUNet(spatial_dims=2, in_channels=1, out_channels=classes, dropout=dropout)
    if variant == "variational":
        net = VarianceUNet(net)
    net = net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    image = torch.randn(batch, 1, size, size, device=device)
    label = torch.randint(0, classes, (batch, 1, size, size), device=device)
    loss_fn = plain_dice_loss() if variant == "plain" else VariationalSamplingDiceLoss(num_samples=samples)

    def step():
        if variant == "mcdropout":
            mc_dropout_train_step(net, image, label, opt, num_passes=samples)
            return
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(image), label)
        loss.backward()
        opt.step()

    return step


def _timed(step, dev) -> float:
    """Seconds of one call of ``step`` (the device synchronised before and after)."""
    import torch

    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    step()
    if cuda:
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0


def run_variant(variant: str, size: int, batch: int, steps: int, warmup: int, device: str, classes: int,
                samples: int, dropout: float, threads: int | None) -> dict:
    """Peak memory (and time) of ``steps`` training steps of one variant, alone in this process."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    step = _make_step(variant, size, batch, dev, classes, samples, dropout)

    # memory baseline: after model/optimiser/data creation, before the first step
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        mem_method = "cuda max_memory_allocated"
    else:
        reset = _reset_peak_rss()
        base_kb = _proc_status_kb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        mem_method = "VmHWM-VmRSS" if reset else "ru_maxrss delta"
    times = [_timed(step, dev) for _ in range(warmup + steps)][warmup:]
    if cuda:
        peak = torch.cuda.max_memory_allocated(dev) - base
    elif mem_method == "VmHWM-VmRSS":
        peak = (_proc_status_kb("VmHWM") - base_kb) * 1024
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) * 1024
    return {"variant": variant, "time_s": statistics.median(times), "peak_bytes": int(peak), "memory": mem_method,
            "device": str(dev), "threads": torch.get_num_threads()}


def run_interleaved(size: int, batch: int, steps: int, warmup: int, device: str, classes: int, samples: int,
                    dropout: float, threads: int | None) -> dict:
    """Median step time of every variant, the variants' steps interleaved in this one process.

    Round ``r`` runs one step of each variant (the order rotating by round), so that machine noise and the
    allocator's state hit all variants alike: the time ratios are measured side by side.
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    steps_fns = {v: _make_step(v, size, batch, dev, classes, samples, dropout) for v in VARIANTS}
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(warmup + steps):
        order = VARIANTS[r % len(VARIANTS):] + VARIANTS[: r % len(VARIANTS)]
        for v in order:
            seconds = _timed(steps_fns[v], dev)
            if r >= warmup:
                times[v].append(seconds)
    return {v: statistics.median(t) for v, t in times.items()}


def _child(args, variant: str) -> dict:
    """Run one child process: ``variant`` alone (memory), or ``"interleaved"`` (time of every variant)."""
    cmd = [sys.executable, "-m", "monai_uda.benchmarks.variance_speed", "--variant", variant,
           "--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--device", args.device, "--classes", str(args.classes),
           "--samples", str(args.samples), "--dropout", str(args.dropout), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"variant '{variant}' failed:\n{proc.stderr[-4000:]}")
    for line in proc.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"variant '{variant}' printed no RESULT line:\n{proc.stdout[-2000:]}")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=256, help="square image side (divisible by 16)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=6, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=1, help="runs of the whole measurement; the best of each is kept")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0, ... ('auto': cuda if available)")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--samples", type=int, default=4, help="K samples (variational) and T passes (MC-dropout)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of the shared backbone (MC-dropout needs > 0)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: OpenMP spinning distorts timings on a shared machine; "
                        "0 = torch's choice)")
    p.add_argument("--variant", choices=VARIANTS + ("interleaved",), default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.size % 16:
        p.error(f"--size must be divisible by 16, got {args.size}")
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.variant is not None:  # child process
        common = (args.size, args.batch, args.steps, args.warmup, args.device, args.classes, args.samples,
                  args.dropout, args.threads)
        res = run_interleaved(*common) if args.variant == "interleaved" else run_variant(args.variant, *common)
        print("RESULT " + json.dumps(res), flush=True)
        return res

    results: dict[str, dict] = {}
    for _ in range(args.repeats):
        times = _child(args, "interleaved")
        for v in VARIANTS:
            r = _child(args, v)  # alone in its process: its own peak memory
            r["isolated_time_s"] = r.pop("time_s")
            r["time_s"] = times[v]
            best = results.get(v)
            if best is None:
                results[v] = r
            else:
                for key in ("time_s", "isolated_time_s", "peak_bytes"):
                    best[key] = min(best[key], r[key])
    any_r = results["plain"]
    print(f"variance_speed: batch {args.batch}x1x{args.size}x{args.size}, {args.classes} classes, K=T={args.samples}, "
          f"{args.steps} timed steps (+{args.warmup} warm-up), best of {args.repeats}, device {any_r['device']}, "
          f"threads {any_r['threads']}, memory: {any_r['memory']}")
    print("time/step: median over the timed steps with the three variants' steps interleaved in one process "
          "(the ratios use it); isolated: each variant alone in a fresh process (where its memory is measured)")
    print(f"{'variant':<14}{'time/step (s)':>15}{'isolated (s)':>14}{'peak memory (MiB)':>20}")
    for v in VARIANTS:
        r = results[v]
        print(f"{v:<14}{r['time_s']:>15.4f}{r['isolated_time_s']:>14.4f}{r['peak_bytes'] / 2**20:>20.1f}")
    var, pl, mc = results["variational"], results["plain"], results["mcdropout"]
    ratios = {
        "time_vs_plain": var["time_s"] / pl["time_s"],
        "isolated_time_vs_plain": var["isolated_time_s"] / pl["isolated_time_s"],
        "memory_vs_plain": var["peak_bytes"] / max(pl["peak_bytes"], 1),
        "time_vs_mcdropout": var["time_s"] / mc["time_s"],
        "memory_vs_mcdropout": var["peak_bytes"] / max(mc["peak_bytes"], 1),
    }
    print(f"targets: time_vs_plain <= 1.10, time_vs_mcdropout <= 0.5, memory_vs_mcdropout <= 0.5 "
          f"(paper: 0.52 time, 0.38 memory); memory_vs_plain={ratios['memory_vs_plain']:.3f} "
          f"isolated_time_vs_plain={ratios['isolated_time_vs_plain']:.3f}")
    print(f"time_vs_plain={ratios['time_vs_plain']:.3f} time_vs_mcdropout={ratios['time_vs_mcdropout']:.3f} "
          f"memory_vs_mcdropout={ratios['memory_vs_mcdropout']:.3f}")
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
