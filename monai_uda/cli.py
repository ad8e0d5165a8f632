"""The ``monai-uda`` command line: ``demo``, ``datalist``, ``validate``, ``benchmark``, ``shift``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

__all__ = ["main"]


#: one representative per method family (``--methods all`` runs every registered method)
DEMO_METHODS = ("source", "oracle", "bn", "early", "buda", "s2d", "past", "fda")


def _methods(s: str) -> list[str]:
    return [m.strip() for m in s.split(",") if m.strip()]


def _quiet_engines() -> None:
    """Keep engine/bundle INFO logs out of the way of the progress bar and the table."""
    for name in ("", "ignite", "monai", "monai.bundle", "monai.handlers.StatsHandler", "py.warnings"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore")


def cmd_demo(a: argparse.Namespace) -> int:
    from monai_uda.benchmarks.methods import load_methods
    from monai_uda.benchmarks.runner import run_benchmark
    from monai_uda.data.demo import ensure_demo_datalist

    _quiet_engines()
    print(f"monai-uda demo: generating the embedded demo pair in {a.out}/data "
          "(MNI152 anatomy shipped by nilearn, SIMULATED scanner shift; no download)", flush=True)
    dl = ensure_demo_datalist(os.path.join(a.out, "data"), spatial_dims=a.spatial_dims, seed=0)
    registered = list(load_methods())
    if a.methods == "all":
        methods = registered
    elif a.methods:
        methods = _methods(a.methods)
    else:
        methods = [m for m in DEMO_METHODS if m in registered]
    df = run_benchmark(dl, methods, a.out, mode="quick" if a.quick else "demo", seeds=a.seeds, device=a.device,
                       amp=a.amp)
    _print_summary(df, a.out)
    return 0


def _print_summary(df, out: str) -> None:
    print()
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())
    g = df.groupby("method")["dice"].mean()
    if "source" in g and "oracle" in g:
        print(f"source-only vs oracle: {100 * (g['oracle'] - g['source']):.1f} Dice points lost to the domain shift")
    print(f"results: {os.path.join(out, 'results.csv')}, {os.path.join(out, 'results.md')}, "
          f"{os.path.join(out, 'results.png')}")


def cmd_datalist(a: argparse.Namespace) -> int:
    from monai_uda.data import build_pair_datalist

    dl = build_pair_datalist(a.pair, a.data_root, out=a.out)
    sizes = ", ".join(f"{k}={len(v)}" for k, v in dl.items() if isinstance(v, list))
    print(f"wrote {a.out}: pair {dl['name']} ({dl['description']}); {sizes}")
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    from monai_uda.data import UDAData

    print(UDAData(a.datalist, base_dir=a.dataset_dir, deep=True))
    print("ok")
    return 0


def cmd_benchmark(a: argparse.Namespace) -> int:
    from monai_uda.benchmarks.runner import run_benchmark
    from monai_uda.data import build_pair_datalist

    _quiet_engines()
    os.makedirs(a.out, exist_ok=True)
    if a.datalist:
        dl = a.datalist
    elif a.pair:
        dl = os.path.join(a.out, f"{a.pair}.json")
        build_pair_datalist(a.pair, a.data_root, out=dl)
    else:
        raise SystemExit("benchmark needs --pair (with --data-root) or --datalist")
    df = run_benchmark(dl, _methods(a.methods), a.out, mode="quick" if a.quick else "full", seeds=a.seeds,
                       device=a.device, amp=a.amp, resume=a.resume, overrides=_overrides(a.override))
    _print_summary(df, a.out)
    return 0


def _override_item(item: str) -> tuple[str, str, object]:
    """``"bn:mode=ema"`` -> ``("bn", "mode", "ema")``; a value is read as JSON when it parses (numbers,
    true/false/null, lists), else kept as a string."""
    import json

    method, sep, rest = item.partition(":")
    key, eq, value = rest.partition("=")
    if not (sep and eq and method.strip() and key.strip()):
        raise argparse.ArgumentTypeError(f"{item!r}: expected METHOD:KEY=VALUE, e.g. bn:mode=ema")
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return method.strip(), key.strip(), parsed


def _overrides(items: Sequence[tuple[str, str, object]]) -> dict[str, dict]:
    """``--override`` items as ``{method: {key: value}}``."""
    out: dict[str, dict] = {}
    for method, key, value in items or []:
        out.setdefault(method, {})[key] = value
    return out


def cmd_report(a: argparse.Namespace) -> int:
    from monai_uda.benchmarks.runner import combined_table

    print(combined_table(a.dirs), end="")
    return 0


def cmd_shift(a: argparse.Namespace) -> int:
    import torch
    from monai.data import DataLoader, Dataset

    from monai_uda.methods.bn_reestimation.shift_report import format_table, shift_report
    from monai_uda.data.image_sets import image_items
    from monai_uda.networks import UDAUNet
    from monai_uda.transforms import segmentation_transforms

    if not os.path.isfile(a.model):
        raise FileNotFoundError(f"model checkpoint not found: {a.model}")
    net = UDAUNet(a.spatial_dims, a.in_channels, a.num_classes)
    state = torch.load(a.model, map_location="cpu", weights_only=True)
    net.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
    xform = segmentation_transforms("infer", spatial_dims=a.spatial_dims, in_channels=a.in_channels)

    def loader(spec, key):
        return DataLoader(Dataset(image_items(spec, key, a.limit), xform), batch_size=1, num_workers=0)

    df = shift_report(net, loader(a.source, "source_training"), loader(a.target, "target_training"), a.out)
    print(format_table(df))
    print(f"aggregate normalised W2: {df.attrs.get('aggregate', float('nan')):.4g}")
    print(f"wrote {os.path.join(a.out, 'shift.csv')} and {os.path.join(a.out, 'shift.png')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monai-uda", description="Unsupervised domain adaptation for MONAI segmentation")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("demo", help="run source-only, oracle and every method on the embedded demo pair")
    d.add_argument("--out", default="results/demo")
    d.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3))
    d.add_argument("--methods", default="",
                   help=f"comma-separated, or 'all' (default: one per family, {','.join(DEMO_METHODS)})")
    d.add_argument("--quick", action="store_true", help="a tiny budget (smoke test)")
    d.add_argument("--seeds", type=int, nargs="+", default=[0])
    d.add_argument("--device", default="cpu")
    d.add_argument("--amp", action="store_true")
    d.set_defaults(fn=cmd_demo)

    dl = sub.add_parser("datalist", help="write the UDA datalist of a real pair (A1, B2, C1, D1)")
    dl.add_argument("--pair", required=True)
    dl.add_argument("--data-root", default=None, help="folder holding the shared data (default ../shared/data)")
    dl.add_argument("--out", required=True)
    dl.set_defaults(fn=cmd_datalist)

    v = sub.add_parser("validate", help="validate a UDA datalist (every file opened and checked)")
    v.add_argument("datalist")
    v.add_argument("--dataset-dir", default=None)
    v.set_defaults(fn=cmd_validate)

    b = sub.add_parser("benchmark", help="train/adapt and evaluate methods on a pair")
    b.add_argument("--pair", default=None)
    b.add_argument("--data-root", default=None)
    b.add_argument("--datalist", default=None, help="use this datalist instead of --pair")
    b.add_argument("--methods", default="source,oracle")
    b.add_argument("--out", required=True)
    b.add_argument("--quick", action="store_true", help="minutes on 2 CPU cores (CI); default is the full mode")
    b.add_argument("--seeds", type=int, nargs="+", default=[0])
    b.add_argument("--device", default="cpu")
    b.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    b.add_argument("--resume", action="store_true",
                   help="keep finished (method, seed) results and the trained source model in --out")
    b.add_argument("--override", action="append", default=[], metavar="METHOD:KEY=VALUE", type=_override_item,
                   help="override a config item of a method's bundle runs (repeatable), e.g. bn:mode=ema")
    b.set_defaults(fn=cmd_benchmark)

    r = sub.add_parser("report", help="one markdown table from several benchmark output folders")
    r.add_argument("dirs", nargs="+")
    r.set_defaults(fn=cmd_report)

    s = sub.add_parser("shift", help="per-layer target-normalised W2 feature shift between two image sets")
    s.add_argument("--model", required=True, help="checkpoint (model.pt) of a UDAUNet")
    s.add_argument("--source", required=True, help="datalist JSON, folder or glob of source images")
    s.add_argument("--target", required=True, help="datalist JSON, folder or glob of target images")
    s.add_argument("--out", default="results/shift")
    s.add_argument("--spatial-dims", type=int, default=2)
    s.add_argument("--in-channels", type=int, default=1)
    s.add_argument("--num-classes", type=int, default=2)
    s.add_argument("--limit", type=int, default=None)
    s.set_defaults(fn=cmd_shift)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args) or 0)
    except (FileNotFoundError, KeyError, ValueError) as e:
        from monai_uda.data import DatalistError

        if isinstance(e, (DatalistError, FileNotFoundError, KeyError)):
            print(f"monai-uda {args.cmd}: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
