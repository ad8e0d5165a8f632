"""Is the final output the better teacher? The early head against the whole network (Sheikh and Schultz).

Self-training of early features trains the early head's prediction (the student) toward the network's final
prediction (the teacher) on target images. That helps only when the teacher is the better of the two on the
target. For every seed of a benchmark folder that ran ``early`` (``<run>/seed<k>/early/head_model.pt``: the
source network with its trained early head; ``<run>/seed<k>/early/model.pt``: the network after refinement), this
script segments the pair's target *test* images (evaluation only: their labels are read here, never by the
method) with four predictors and reports their mean Dice (foreground classes, as the benchmark):

- ``final_before`` / ``early_before``: the source network's final output / its early head, before refinement;
- ``final_after`` / ``early_after``: the same two after refinement (the refined network with the frozen head);
- ``final_before_source`` / ``early_before_source``: the two ``before`` predictors on the held-out source validation
  images (the head was trained on source_training): how good a student the head can be at all.

Dice is the benchmark's per-case Dice (:func:`monai_uda.evaluation.case_metrics`), with the benchmark's sliding
window (the full mode's crop: 128² in 2D, 48³ in 3D). Only the first head of a segmentor is scored; a segmentor with
heads at several levels is refused.

``teacher_margin`` = final_before − early_before: negative means the early head is already better than its
teacher on the target, so the paper's premise fails on that pair.

    python scripts/early_teacher.py results/v2/D1 [--out docs/benchmarks/early_teacher/D1] [--datalist DL] [--roi N]

The seeds are those whose models are in the run folder; with ``--out``, the rows of other seeds already there are
kept (a benchmark continued on another machine has only its own seeds' models).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

def head_settings(state: dict, name: str = "checkpoint") -> tuple[list[int], int]:
    """``(levels, hidden_channels)`` of the early head(s) of a segmentor state dict (``heads.<level>.<layer>...``):
    a head with two layers has a hidden 3x3 conv of ``hidden_channels`` outputs, one layer means 0."""
    levels = sorted({int(k.split(".")[1]) for k in state if k.startswith("heads.")})
    if not levels:
        raise ValueError(f"{name} is not an early-features segmentor checkpoint: no 'heads.' weights")
    first = f"heads.{levels[0]}"
    hidden = int(state[f"{first}.0.conv.weight"].shape[0]) if f"{first}.1.conv.weight" in state else 0
    return levels, hidden


def _segmentor(head_model: Path, refined: Path | None, uda) -> torch.nn.Module:
    """The early-features segmentor of ``head_model``; with ``refined``, its base replaced by the refined network."""
    from monai_uda.methods.early_features.early_head import EarlyFeaturesSegmentor
    from monai_uda.networks import UDAUNet

    state = torch.load(head_model, map_location="cpu", weights_only=True)
    levels, hidden = head_settings(state, str(head_model))
    if len(levels) > 1:
        raise ValueError(f"{head_model} has heads at levels {levels}: this script scores one head")
    net = UDAUNet(spatial_dims=uda.spatial_dims, in_channels=uda.in_channels, out_channels=uda.num_classes)
    seg = EarlyFeaturesSegmentor(net, levels=levels, hidden_channels=hidden)
    for module, path, weights in ((seg, head_model, state), (seg.network, refined, None)):
        if path is None:
            continue
        try:
            module.load_state_dict(weights if weights is not None else
                                   torch.load(path, map_location="cpu", weights_only=True))
        except RuntimeError as e:
            raise ValueError(f"{path} does not fit the segmentor of {head_model}: "
                             f"{str(e).splitlines()[0]}") from None
    return seg.eval()


def seed_rows(run: Path, seed: int, roi: int, datalist: Path, split: str = "target_test") -> list[dict]:
    """One row per image of ``split``: the Dice of the four predictors (of the two ``before`` ones on a source split,
    where the head was trained: how good a student it can be at all)."""
    from monai.inferers import SlidingWindowInferer

    from monai_uda.data import UDAData
    from monai_uda.evaluation import case_metrics
    from monai_uda.transforms import segmentation_transforms

    uda = UDAData(str(datalist))
    folder = run / f"seed{seed}" / "early"
    nets = {"before": _segmentor(folder / "head_model.pt", None, uda)}
    if split == "target_test":
        nets["after"] = _segmentor(folder / "head_model.pt", folder / "model.pt", uda)
    tf = segmentation_transforms("eval", uda=uda)
    inferer = SlidingWindowInferer(roi_size=[roi] * uda.spatial_dims, sw_batch_size=4, overlap=0.25)
    rows = []
    with torch.no_grad():
        for item in uda.split(split):
            d = tf(item)
            y = torch.as_tensor(d["label"])[0].long()
            row = {"split": split, "seed": seed, "image": Path(str(item["image"])).name}
            for when, net in nets.items():
                final, early = inferer(d["image"][None], lambda x, net=net: torch.cat(net(x)[:2], 1)).split(
                    uda.num_classes, 1)
                for name, logits in (("final", final), ("early", early)):
                    row[f"{name}_{when}"] = case_metrics(logits[0].argmax(0), y, num_classes=uda.num_classes)["dice"]
            rows.append(row)
    return rows


def summary(per_image: pd.DataFrame) -> pd.DataFrame:
    """Per seed: the mean target-test Dice of each predictor, the teacher margin (final_before − early_before) and
    the two ``before`` predictors on the source validation images (``*_source``), where present."""
    cols = ["final_before", "early_before", "final_after", "early_after"]
    t = per_image[per_image.split == "target_test"]
    s = t.groupby("seed")[cols].mean()
    s["teacher_margin"] = s.final_before - s.early_before
    src = per_image[per_image.split != "target_test"]
    if len(src):
        s = s.join(src.groupby("seed")[["final_before", "early_before"]].mean().add_suffix("_source"))
    return s.reset_index()


def with_other_seeds(per_image: pd.DataFrame, earlier: pd.DataFrame | None) -> pd.DataFrame:
    """``per_image`` with the rows of ``earlier`` (an earlier ``per_image.csv``) for seeds it does not have: seeds
    whose models were on another machine stay in the tables."""
    if earlier is None or earlier.empty:
        return per_image
    kept = earlier[~earlier.seed.isin(per_image.seed.unique())]
    return pd.concat([kept, per_image], ignore_index=True).sort_values("seed", kind="stable").reset_index(drop=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a benchmark folder that ran early")
    p.add_argument("--out", type=Path, default=None, help="write per_image.csv and summary.csv here")
    p.add_argument("--roi", type=int, default=None, help="sliding-window side (default: the benchmark's full-mode crop)")
    p.add_argument("--datalist", type=Path, default=None, help="the pair's datalist (default: the run's *.json)")
    a = p.parse_args()
    found = sorted(a.run.glob("*.json"))
    datalist = a.datalist or (found[0] if found else None)
    if datalist is None:
        raise SystemExit(f"{a.run}: no datalist found; pass --datalist")
    seeds = sorted(int(d.parent.parent.name[4:]) for d in a.run.glob("seed*/early/head_model.pt")
                   if (d.parent / "model.pt").is_file() and d.parent.parent.name[4:].isdigit())
    if not seeds:
        raise SystemExit(f"{a.run}: no seed*/early/head_model.pt with model.pt (run the benchmark with --methods early)")
    from monai_uda.benchmarks.runner import budget_for
    from monai_uda.data import UDAData

    roi = a.roi or int(budget_for("full", UDAData(str(datalist)).spatial_dims)["roi_size"][0])
    per_image = pd.DataFrame([r for s in seeds for split in ("target_test", "source_validation")
                              for r in seed_rows(a.run, s, roi, datalist, split)])
    if a.out and (a.out / "per_image.csv").is_file():
        per_image = with_other_seeds(per_image, pd.read_csv(a.out / "per_image.csv"))
    s = summary(per_image)
    print(s.to_string(index=False, float_format="%.3f"))
    m = s.drop(columns="seed")
    print("mean ± std over seeds: " + ", ".join(f"{c} {m[c].mean():.3f} ± {m[c].std(ddof=0):.3f}" for c in m))
    if a.out:
        from monai_uda.utils import atomic_write_text

        atomic_write_text(a.out / "per_image.csv", per_image.to_csv(index=False))
        atomic_write_text(a.out / "summary.csv", s.to_csv(index=False))
        for seed in seeds:  # how each refinement ran (stop rule, agreement per epoch): the fidelity page reads it
            run = a.run / f"seed{seed}" / "early" / "refinement_summary.json"
            if run.is_file():
                (a.out / "refinement").mkdir(exist_ok=True)
                atomic_write_text(a.out / "refinement" / f"seed{seed}.json", run.read_text())
        atomic_write_text(a.out / "command.txt", f"python scripts/early_teacher.py {a.run} --datalist {datalist} "
                                                 f"--roi {roi} --out {a.out}\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
