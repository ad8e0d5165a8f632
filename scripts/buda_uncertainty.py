"""BUDA-Seg's variance map against the errors it should mark, and its per-round loss (Li et al., Fig. 5).

For every seed of a benchmark folder that ran ``buda`` (``<run>/seed<k>/buda/variance_model.pt``), the adapted
VarianceUNet segments the pair's target *test* images (evaluation only: their labels are read here, never by the
method) and :func:`monai_uda.evaluation.uncertainty.error_detection` asks whether the predicted variance of the
predicted class ranks wrong pixels above right ones (AUROC), beside the softmax entropy of the same logits as a
baseline. The per-round training Dice loss of ``buda`` and of ``selftrain`` (the paper's "without uncertainty
learning") is read from each run's ``adapt_summary.json`` (the paper's Figure 5 plots it per iteration).

    python scripts/buda_uncertainty.py results/v2/A1 [--out docs/benchmarks/buda_uncertainty/A1]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import torch

from monai_uda.utils import atomic_write_text


def _network(path: Path, uda) -> torch.nn.Module:
    from monai_uda.methods.buda.variance_head import VarianceUNet
    from monai_uda.networks import UDAUNet

    net = VarianceUNet(UDAUNet(spatial_dims=uda.spatial_dims, in_channels=uda.in_channels,
                               out_channels=uda.num_classes))
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return net.eval()


def seed_rows(run: Path, seed: int, roi: int, datalist: Path) -> dict:
    from monai.inferers import SlidingWindowInferer

    from monai_uda.data import UDAData
    from monai_uda.evaluation.uncertainty import error_detection, softmax_entropy
    from monai_uda.transforms import segmentation_transforms

    uda = UDAData(str(datalist))
    net = _network(run / f"seed{seed}" / "buda" / "variance_model.pt", uda)
    net.output = "both"
    tf = segmentation_transforms("eval", uda=uda)
    inferer = SlidingWindowInferer(roi_size=[roi] * uda.spatial_dims, sw_batch_size=4, overlap=0.25)
    us, es, ps, ys = [], [], [], []
    with torch.no_grad():
        for item in uda.split("target_test"):
            d = tf(item)
            logits, var = inferer(d["image"][None], lambda x: torch.cat(net(x), 1))[0].split(uda.num_classes, 0)
            pred = logits.argmax(0)
            us.append(var.gather(0, pred[None])[0].flatten())
            es.append(softmax_entropy(logits[None])[0].flatten())
            ps.append(pred.flatten())
            ys.append(torch.as_tensor(d["label"])[0].long().flatten())
    u, e, p, y = (torch.cat(t) for t in (us, es, ps, ys))
    v, h = error_detection(u, p, y), error_detection(e, p, y)
    return {"seed": seed, "auroc_variance": v["auroc"], "auroc_entropy": h["auroc"], "error_rate": v["error_rate"],
            "variance_bin_error_rate": v["bin_error_rate"]}


def round_losses(run: Path) -> pd.DataFrame:
    rows = []
    for summary in sorted(run.glob("seed*/*/adapt_summary.json")):
        method = summary.parent.name
        if method not in ("buda", "selftrain"):
            continue
        for h in json.loads(summary.read_text()).get("train_history", []):
            rows.append({"method": method, "seed": int(summary.parent.parent.name[4:]), "round": h["round"],
                         "train_dice_loss": h["train_loss"]})
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a benchmark folder that ran buda (and selftrain)")
    p.add_argument("--out", type=Path, default=None, help="write uncertainty.csv and round_losses.csv here")
    p.add_argument("--roi", type=int, default=None, help="sliding-window side (default: the benchmark's full-mode crop)")
    p.add_argument("--datalist", type=Path, default=None,
                   help="the pair's datalist (default: the run's <pair>.json, or data/*.json of a demo run)")
    a = p.parse_args()
    found = sorted(a.run.glob("*.json")) + sorted(a.run.glob("data/*.json"))
    datalist = a.datalist or (found[0] if found else None)
    if datalist is None:
        raise SystemExit(f"{a.run}: no datalist found; pass --datalist")
    seeds = sorted(int(d.parent.parent.name[4:]) for d in a.run.glob("seed*/buda/variance_model.pt"))
    if not seeds:
        raise SystemExit(f"{a.run}: no seed*/buda/variance_model.pt (run the benchmark with --methods buda)")
    from monai_uda.benchmarks.runner import budget_for
    from monai_uda.data import UDAData

    roi = a.roi or int(budget_for("full", UDAData(str(datalist)).spatial_dims)["roi_size"][0])
    unc = pd.DataFrame([seed_rows(a.run, s, roi, datalist) for s in seeds])
    rounds = round_losses(a.run)
    print(unc.drop(columns="variance_bin_error_rate").to_string(index=False))
    print(f"AUROC of the variance for wrong pixels: {unc.auroc_variance.mean():.3f} ± {unc.auroc_variance.std(ddof=0):.3f}"
          f"; softmax entropy: {unc.auroc_entropy.mean():.3f} ± {unc.auroc_entropy.std(ddof=0):.3f} (seeds {seeds})")
    if len(rounds):
        print(rounds.groupby(["method", "round"]).train_dice_loss.agg(["mean", "std", "count"]).to_string())
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(a.out / "uncertainty.csv", unc.to_csv(index=False))
        atomic_write_text(a.out / "round_losses.csv", rounds.to_csv(index=False))
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
