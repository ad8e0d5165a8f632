"""One torch thread or two? Time a UDAUNet training step (forward, backward, Adam) at the benchmark's full-mode
batch (2D: 4 x 2 crops of 128²; 3D: 1 x 2 crops of 48³) with each thread count, side by side in one run, each in
its own process (the thread count is fixed when torch starts), and print the ratio. Run it on an otherwise idle
machine: a second job on the same cores makes both numbers meaningless.

    python scripts/thread_speed.py [--threads 1 2] [--steps 15]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

STEP = """
import time, torch
from monai_uda.networks import UDAUNet
torch.set_num_threads({threads}); torch.manual_seed(0)
net = UDAUNet(spatial_dims={dims}, in_channels=1, out_channels=2)
opt = torch.optim.Adam(net.parameters(), 1e-3)
x = torch.randn(8, 1, 128, 128) if {dims} == 2 else torch.randn(2, 1, 48, 48, 48)
y = torch.randint(0, 2, (x.shape[0],) + x.shape[2:])
def step():
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
for _ in range(3):
    step()
s = time.perf_counter()
for _ in range({steps}):
    step()
print((time.perf_counter() - s) / {steps})
"""


def seconds_per_step(threads: int, dims: int, steps: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", STEP.format(threads=threads, dims=dims, steps=steps)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--steps", type=int, default=15)
    a = p.parse_args()
    for dims in (2, 3):
        t = {n: seconds_per_step(n, dims, a.steps) for n in a.threads}
        base = t[a.threads[0]]
        print(f"{dims}D: " + ", ".join(f"{n} thread(s) {1000 * s:.0f} ms/step ({base / s:.2f}x)" for n, s in t.items()))


if __name__ == "__main__":
    main()
