"""The ``monai-uda`` command line: ``demo``, ``datalist``, ``validate``, ``benchmark``, ``report``, ``shift``,
``infer``, ``select``."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

from monai_uda.utils import error_message, user_error

__all__ = ["main"]


#: one representative per method family (``--methods all`` runs every registered method)
DEMO_METHODS = ("source", "oracle", "bn", "early", "buda", "s2d", "past", "fda")


def _methods(s: str) -> list[str]:
    return [m.strip() for m in s.split(",") if m.strip()]


#: loggers whose INFO records are engine/bundle details: in the run's log file, not on the console
_ENGINE_LOGGERS = ("ignite", "monai", "monai.bundle", "monai.bundle.workflows", "monai.handlers.StatsHandler",
                   "StatsHandler", "py.warnings")
#: the details log of a run, in its output folder
LOG_NAME = "monai_uda.log"


def _quiet_engines(log_file: str | None = None) -> None:
    """Keep engine/bundle INFO logs off the console (warnings still show); with ``log_file``, write them there.

    The console gets WARNING and above (a root stream handler); the log file gets INFO and above from the
    engines (ignite, MONAI: losses, metrics, bundle steps) and every warning. Loggers that MONAI gives their own
    console handler keep it, at WARNING.
    """
    root = logging.getLogger()
    root.setLevel(logging.INFO if log_file else logging.WARNING)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.WARNING)
    console._monai_uda = True  # type: ignore[attr-defined]
    root.handlers = [h for h in root.handlers if not getattr(h, "_monai_uda", False)] + [console]
    py_warnings = logging.getLogger("py.warnings")
    py_warnings.propagate = False  # warnings: the log file only
    py_warnings.handlers = [h for h in py_warnings.handlers if not getattr(h, "_monai_uda", False)]
    if log_file:
        fh = _LazyFileHandler(log_file)
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        fh._monai_uda = True  # type: ignore[attr-defined]
        root.addHandler(fh)
        py_warnings.addHandler(fh)
    for name in _ENGINE_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO if log_file else logging.WARNING)
        for h in logger.handlers:  # MONAI's own stdout handlers (they do not propagate)
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                h.setLevel(logging.WARNING)
    logging.captureWarnings(True)  # Python warnings go to the log file (py.warnings), not the console


class _LazyFileHandler(logging.FileHandler):
    """A file handler that creates its file (and folder) at the first record: a refused run leaves nothing."""

    def __init__(self, path: str):
        super().__init__(path, delay=True)

    def _open(self):
        os.makedirs(os.path.dirname(os.path.abspath(self.baseFilename)), exist_ok=True)
        return super()._open()


def cmd_demo(a: argparse.Namespace) -> int:
    from monai_uda.benchmarks.methods import load_methods
    from monai_uda.benchmarks.runner import run_benchmark
    from monai_uda.data.demo import ensure_demo_datalist

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
                       amp=a.amp, verbose=a.verbose)
    _print_summary(df, a.out)
    return 0


def _print_summary(df, out: str) -> None:
    print()
    with open(os.path.join(out, "results.md")) as f:
        print(f.read())
    g = df.groupby("method")["dice"].mean()
    if "source" in g and "oracle" in g:
        print(f"source-only vs oracle: {100 * (g['oracle'] - g['source']):.1f} Dice points lost to the domain shift")
    log = os.path.join(out, LOG_NAME)
    print(f"results: {os.path.join(out, 'results.csv')}, {os.path.join(out, 'results.md')}, "
          f"{os.path.join(out, 'results.png')}" + (f"; details: {log}" if os.path.isfile(log) else ""))


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

    overrides = _overrides(a.override)  # refused before anything is written
    os.makedirs(a.out, exist_ok=True)
    if a.datalist:
        dl = a.datalist
    elif a.pair:
        dl = os.path.join(a.out, f"{a.pair}.json")
        build_pair_datalist(a.pair, a.data_root, out=dl)
    else:
        raise SystemExit("benchmark needs --pair (with --data-root) or --datalist")
    df = run_benchmark(dl, _methods(a.methods), a.out, mode="quick" if a.quick else "full", seeds=a.seeds,
                       device=a.device, amp=a.amp, resume=a.resume, overrides=overrides,
                       verbose=a.verbose, source_from=a.source_from)
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
    """``--override`` items as ``{method: {key: value}}``; a key that no bundle config has, or a budget value
    below 1, is refused in one line (a bundle run would take the first silently and fail late on the second)."""
    out: dict[str, dict] = {}
    ids = _config_ids() if items else set()  # every bundle config read once, not once per item
    for method, key, value in items or []:
        _check_override(method, key, value, ids)
        out.setdefault(method, {})[key] = value
    return out


#: budget keys whose values must be positive integers
_POSITIVE = {"max_epochs", "epoch_length", "batch_size", "num_samples", "num_rounds", "translation_epochs",
             "translation_epoch_length", "translation_batch_size", "head_max_epochs", "head_epoch_length",
             "source_max_epochs", "source_epoch_length", "val_interval"}


def _config_ids() -> set[str]:
    """Every config id (``key``, ``a#b``, ``a#0#c``) of every bundle's configs."""
    import glob
    import json

    from monai_uda.bundle import bundles_root

    ids: set[str] = set()

    def walk(x: object, prefix: str) -> None:
        items = x.items() if isinstance(x, dict) else enumerate(x) if isinstance(x, list) else ()
        for k, v in items:
            ids.add(f"{prefix}#{k}" if prefix else str(k))
            walk(v, f"{prefix}#{k}" if prefix else str(k))

    for f in glob.glob(os.path.join(str(bundles_root()), "*", "configs", "*.json")):
        try:
            with open(f) as fh:
                walk(json.load(fh), "")
        except (OSError, ValueError):
            continue
    return ids


def _check_override(method: str, key: str, value: object, ids: set[str]) -> None:
    """Refuse ``key`` when no bundle config id in ``ids`` (:func:`_config_ids`) has it or its parent component."""
    import difflib

    item = f"--override {method}:{key}={value}"
    parent = key.rsplit("#", 1)[0] if "#" in key else None
    if ids and key not in ids and parent not in ids:  # a new argument of an existing component is fine
        close = difflib.get_close_matches(key, sorted(i for i in ids if "#" not in i or "#" in key), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"{item}: no bundle config has the key {key!r}{hint}")
    if key in _POSITIVE and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"{item}: {key} must be a positive integer")


def cmd_report(a: argparse.Namespace) -> int:
    from monai_uda.benchmarks.runner import combined_table

    print(combined_table(a.dirs), end="")
    return 0


def cmd_shift(a: argparse.Namespace) -> int:
    from monai.data import DataLoader, Dataset

    from monai_uda.methods.bn_reestimation.shift_report import format_table, shift_report
    from monai_uda.data.image_sets import image_items
    from monai_uda.networks import UDAUNet
    from monai_uda.transforms import segmentation_transforms

    from monai_uda.bundle.stages import load_network

    net = load_network(UDAUNet(a.spatial_dims, a.in_channels, a.num_classes), a.model)
    xform = segmentation_transforms("infer", spatial_dims=a.spatial_dims, in_channels=a.in_channels)

    def loader(spec, key):
        return DataLoader(Dataset(image_items(spec, key, a.limit), xform), batch_size=1, num_workers=0)

    df = shift_report(net, loader(a.source, "source_training"), loader(a.target, "target_training"), a.out)
    print(format_table(df))
    print(f"aggregate normalised W2: {df.attrs.get('aggregate', float('nan')):.4g}")
    print(f"wrote {os.path.join(a.out, 'shift.csv')} and {os.path.join(a.out, 'shift.png')}")
    return 0


def _model_shape(path: str) -> tuple[int, int, int]:
    """(spatial_dims, in_channels, num_classes) of a UDAUNet state dict, from its first and last convolutions."""
    from monai_uda.bundle.stages import CheckpointError, load_state_dict

    state = load_state_dict(path)
    first, last = state.get("conv_0.conv_0.conv.weight"), state.get("final_conv.weight")
    if first is None or last is None or first.ndim not in (4, 5):
        raise CheckpointError(f"{path} is not a UDAUNet state dict (no conv_0/final_conv weights); pass the "
                              "models/model.pt of a monai-uda bundle")
    return first.ndim - 2, int(first.shape[1]), int(last.shape[0])


def cmd_infer(a: argparse.Namespace) -> int:
    import torch

    from monai_uda.bundle import load_network, run_bundle
    from monai_uda.data.image_sets import image_items
    from monai_uda.networks import UDAUNet

    items = image_items(a.input, "target_training", a.limit)
    dims, channels, classes = _model_shape(a.model)
    dims, channels, classes = (a.spatial_dims or dims), (a.in_channels or channels), (a.num_classes or classes)
    load_network(UDAUNet(dims, channels, classes), a.model)  # a one-line error for a model of other classes/channels
    roi = a.roi_size or ([128] * dims if dims == 2 else [64] * dims)
    if len(roi) == 1:
        roi = roi * dims
    print(f"monai-uda infer: {len(items)} image(s), model {a.model} ({dims}D, {channels} channel(s), "
          f"{classes} classes)", flush=True)
    run_bundle("source_segmentation", "inference.json", workflow_type="infer", checkpoint=os.path.abspath(a.model),
               datalist=items, output_dir=os.path.abspath(a.out), spatial_dims=dims, in_channels=channels,
               num_classes=classes, roi_size=roi, device=torch.device(a.device), amp=False)
    return 0  # inference.json's last step printed where the segmentations are


def load_validator_plugins() -> list[str]:
    """Import every ``monai_uda/methods/<method>/*_validator.py``: where a method package registers its validators
    (e.g. ``w2_shift`` of BatchNorm re-estimation) without the generic ``monai_uda.validators`` importing it.

    Returns:
        the imported modules' names.
    """
    import glob
    import importlib

    import monai_uda.methods as methods

    names = []
    for root in methods.__path__:
        for path in sorted(glob.glob(os.path.join(root, "*", "*_validator.py"))):
            package = os.path.basename(os.path.dirname(path))
            name = f"monai_uda.methods.{package}.{os.path.splitext(os.path.basename(path))[0]}"
            importlib.import_module(name)
            names.append(name)
    return names


def _rule(s: str) -> str | list[str]:
    items = [c.strip() for c in s.split(",") if c.strip()]
    return items[0] if len(items) == 1 else items


def _names(items: Sequence[str] | None) -> list[str] | None:
    """``--validators a,b c`` -> ``["a", "b", "c"]`` (None when not given)."""
    if items is None:
        return None
    return [n.strip() for item in items for n in item.split(",") if n.strip()]


def cmd_select(a: argparse.Namespace) -> int:
    import torch

    from monai_uda.bundle import bundle_dir
    from monai_uda.bundle.stages import check_source_checkpoint
    from monai_uda.networks import UDAUNet
    from monai_uda.utils import atomic_write_text
    from monai_uda.validators import score_candidates, select
    from monai_uda.validators.candidates import (as_uda, bench_candidates, checkpoint_candidates, default_inferer,
                                                 source_statistics, target_images)
    from monai_uda.validators.registry import get_validator, validator_needs
    from monai_uda.validators.score import default_validators
    from monai_uda.validators.selection import DEFAULT_RULE
    from monai_uda.validators.selection_report import (plot_selection, selection_record, selection_table,
                                                       write_selection_bundle, write_selection_csv)

    if a.checkpoints and not a.source:
        raise ValueError("--checkpoints needs --source (the source model, the reference the candidates must beat)")
    if a.source and not a.checkpoints:
        raise ValueError("--source goes with --checkpoints (a --bench folder has its own source model)")
    if a.seed is not None and not a.bench:
        raise ValueError("--seed goes with --bench")
    for option, value in (("--limit", a.limit), ("--label-limit", a.label_limit)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be at least 1, got {value}")
    load_validator_plugins()
    validators = _names(a.validators)
    for n in validators or []:
        get_validator(n)  # an unknown name: one line naming the known ones, before anything is loaded
    rule = _rule(a.rule)
    uda = as_uda(a.datalist)
    dims, channels, classes = uda.spatial_dims, uda.in_channels, uda.num_classes

    def network() -> torch.nn.Module:
        return UDAUNet(dims, channels, classes)

    if a.bench:
        found = bench_candidates(a.bench, network, seed=a.seed)
    else:
        found = checkpoint_candidates(a.checkpoints, a.source, network)
    check_source_checkpoint(found.checkpoints[found.source_name], uda)  # its model card: trained on this datalist
    if found.skipped:
        print(f"monai-uda select: {found.skipped_message()}", flush=True)
    if len(found.networks) < 2:
        raise ValueError(f"{found.description}: no candidate besides the source model to select from")
    images = target_images(uda, a.limit)
    if validators is None:  # the cheap set (about one extra inference pass); w2_shift and tta on request
        validators = default_validators(len(found.networks), len(images), True, True)
    columns = list(DEFAULT_RULE) if rule == "default" else [rule] if isinstance(rule, str) else list(rule)
    if rule == "default" and not set(columns) & set(validators):
        raise ValueError(f"--rule default needs one of the validators {', '.join(DEFAULT_RULE)}; "
                         f"--validators gave {', '.join(validators)}")
    if rule != "default" and set(columns) - set(validators):
        raise ValueError(f"--rule {a.rule}: {', '.join(sorted(set(columns) - set(validators)))} not among the "
                         f"validators run ({', '.join(validators)})")
    needs_statistics = any("source_statistics" in validator_needs(n) for n in validators)
    statistics = source_statistics(uda, a.label_limit) if needs_statistics else None
    labels = len(uda.split("source_training", limit=a.label_limit)) if needs_statistics else 0
    print(f"monai-uda select: {len(found.networks)} models ({', '.join(found.networks)}) from {found.description}; "
          f"{len(images)} target_training image(s); validators {', '.join(validators)}"
          + (f"; source-label prior from {labels} source_training label(s)" if labels else ""), flush=True)
    df = score_candidates(found.networks, images, source_name=found.source_name, validators=validators,
                          inferer=default_inferer(dims, a.roi_size), device=torch.device(a.device), progress=True,
                          source_statistics=statistics)
    choice, reason = select(df, rule, source_name=found.source_name)
    table = selection_table(df, choice, rule, found.checkpoints)
    os.makedirs(a.out, exist_ok=True)
    csv = write_selection_csv(table, os.path.join(a.out, "selection.csv"))
    png = plot_selection(table, os.path.join(a.out, "selection.png"), rule,
                         title=f"{uda.name}: {found.description} (selected {choice})")
    record = selection_record(table, choice, reason, rule, checkpoint=os.path.abspath(found.checkpoints[choice]),
                              candidates=found.description, datalist=os.path.abspath(a.datalist),
                              target_images=len(images), skipped=found.skipped, labels=uda.labels)
    atomic_write_text(os.path.join(a.out, "selection.json"), _json(record))
    shown = [c for c in table.columns if c not in ("checkpoint", "chosen")]
    print(table[shown].to_string(float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {csv}, {png} and {os.path.join(a.out, 'selection.json')}")
    if a.write_bundle:
        write_selection_bundle(a.write_bundle, bundle_dir("source_segmentation"), found.networks[choice].state_dict(),
                               record, dims, channels, classes)
        print(f"wrote bundle {a.write_bundle}: models/model.pt = {choice} ({found.checkpoints[choice]}), validator "
              "scores in configs/metadata.json (uda_selection)")
    print(f"selected: {choice} ({found.checkpoints[choice]}): {reason}")
    return 0


def _json(obj: object) -> str:
    import json

    return json.dumps(obj, indent=2, default=str)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monai-uda", description="Unsupervised domain adaptation for MONAI segmentation")
    p.add_argument("--debug", action="store_true", help="show full tracebacks and engine logs instead of one-line errors")
    sub = p.add_subparsers(dest="cmd", required=True)

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=f"example: {example}",
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)

    def run_options(c: argparse.ArgumentParser, seeds: list[int] = [0]) -> None:  # noqa: B006 - read only
        c.add_argument("--seeds", type=int, nargs="+", default=list(seeds),
                       help="seeds; each one trains and adapts anew (a claim needs at least three)")
        c.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
        c.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
        c.add_argument("-v", "--verbose", action="store_true", help="also show every training/adaptation progress bar")
        threads_option(c)

    def threads_option(c: argparse.ArgumentParser) -> None:
        c.add_argument("--threads", type=int, default=None,
                       help="torch threads (None: OMP_NUM_THREADS if set, else the cores / (1 + data-loader workers))")

    d = command("demo", "run source-only, oracle and one method per family on the embedded demo pair "
                "(a simulated scanner shift)", "monai-uda demo --methods source,oracle,bn")
    d.add_argument("--out", default="results/demo", help="output folder (data, models, results.csv/md/png)")
    d.add_argument("--spatial-dims", type=int, default=2, choices=(2, 3), help="2D slices or 3D volumes")
    d.add_argument("--methods", default="",
                   help=f"comma-separated, or 'all' (empty: one per family, {','.join(DEMO_METHODS)})")
    d.add_argument("--quick", action="store_true", help="a tiny budget (smoke test)")
    run_options(d)
    d.set_defaults(fn=cmd_demo)

    dl = command("datalist", "write the UDA datalist of a real pair (A1, B2, C1, D1)",
                 "monai-uda datalist --pair A1 --data-root ../shared/data --out A1.json")
    dl.add_argument("--pair", required=True, help="A1, B2, C1 or D1")
    dl.add_argument("--data-root", default=None, help="folder holding the shared data (None: ../shared/data)")
    dl.add_argument("--out", required=True, help="the datalist JSON to write")
    dl.set_defaults(fn=cmd_datalist)

    v = command("validate", "validate a UDA datalist: every file opened, dimensions, channels and labels checked",
                "monai-uda validate A1.json")
    v.add_argument("datalist", help="the datalist JSON")
    v.add_argument("--dataset-dir", default=None, help="folder of relative paths (None: the datalist's folder)")
    v.set_defaults(fn=cmd_validate)

    b = command("benchmark", "train/adapt and evaluate methods on a pair, each through its bundle",
                "monai-uda benchmark --pair A1 --data-root ../shared/data --methods source,oracle,bn --out results/A1")
    b.add_argument("--pair", default=None, help="a real pair (A1, B2, C1, D1), with --data-root")
    b.add_argument("--data-root", default=None, help="folder holding the shared data (None: ../shared/data)")
    b.add_argument("--datalist", default=None, help="use this datalist instead of --pair")
    b.add_argument("--methods", default="source,oracle", help="comma-separated method names")
    b.add_argument("--out", required=True, help="output folder (one writer at a time)")
    b.add_argument("--quick", action="store_true", help="minutes on 2 CPU cores (CI); default is the full mode")
    run_options(b, seeds=[0, 1, 2])
    b.add_argument("--resume", action="store_true",
                   help="keep finished (method, seed) results in --out (those of methods and seeds not asked for "
                        "too) and each seed's finished source model (the card beside it)")
    b.add_argument("--override", action="append", default=[], metavar="METHOD:KEY=VALUE", type=_override_item,
                   help="override a config item of a method's bundle runs (repeatable), e.g. bn:mode=ema")
    b.add_argument("--source-from", default=None, metavar="DIR",
                   help="reuse each seed's source model of this earlier benchmark folder of the same pair (a "
                        "budget check paired with that run's rows)")
    b.set_defaults(fn=cmd_benchmark)

    r = command("report", "one markdown table from several benchmark output folders",
                "monai-uda report results/A1 results/B2")
    r.add_argument("dirs", nargs="+", help="benchmark output folders (each with results.csv)")
    r.set_defaults(fn=cmd_report)

    s = command("shift", "per-layer target-normalised W2 feature shift between two image sets (Stenger et al.)",
                "monai-uda shift --model models/model.pt --source A1.json --target A1.json")
    s.add_argument("--model", required=True, help="checkpoint (model.pt) of a UDAUNet")
    s.add_argument("--source", required=True, help="datalist JSON, folder or glob of source images")
    s.add_argument("--target", required=True, help="datalist JSON, folder or glob of target images")
    s.add_argument("--out", default="results/shift", help="output folder (shift.csv, shift.png)")
    s.add_argument("--spatial-dims", type=int, default=2, help="of the model and images")
    s.add_argument("--in-channels", type=int, default=1, help="of the model")
    s.add_argument("--num-classes", type=int, default=2, help="of the model")
    s.add_argument("--limit", type=int, default=None, help="use at most this many images of each set")
    threads_option(s)
    s.set_defaults(fn=cmd_shift)

    i = command("infer", "segment images with a trained or adapted model; writes <name>_seg in the input's format "
                "(PNG in, PNG out; TIFF in, TIFF out; NIfTI otherwise)",
                "monai-uda infer --model models/model.pt --input images/ --out results/seg")
    i.add_argument("--model", required=True, help="checkpoint (model.pt) of a UDAUNet, e.g. a bundle's models/model.pt")
    i.add_argument("--input", required=True, help="an image file, a folder, a glob or a datalist JSON (target_training)")
    i.add_argument("--out", default="results/infer", help="output folder")
    i.add_argument("--spatial-dims", type=int, default=None, help="of the model (None: read from the checkpoint)")
    i.add_argument("--in-channels", type=int, default=None, help="of the model (None: read from the checkpoint)")
    i.add_argument("--num-classes", type=int, default=None, help="of the model (None: read from the checkpoint)")
    i.add_argument("--roi-size", type=int, nargs="+", default=None,
                   help="sliding-window size (None: 128 per axis in 2D, 64 in 3D)")
    i.add_argument("--limit", type=int, default=None, help="segment at most this many images")
    i.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    threads_option(i)
    i.set_defaults(fn=cmd_infer)

    sel = command("select", "pick the adapted model to trust without target labels: score candidate models on the "
                  "unlabelled target_training images with label-free validators, or keep the source model",
                  "monai-uda select --datalist A1.json --bench results/A1 --seed 0 --out results/A1/selection")
    sel.add_argument("--datalist", required=True, help="the UDA datalist (target_training images; source_training "
                     "labels for the source-label prior; target labels are never read)")
    which = sel.add_mutually_exclusive_group(required=True)
    which.add_argument("--bench", default=None, help="a monai-uda benchmark output folder: its seed's models compete "
                       "(oracle, rf and enhancer skipped)")
    which.add_argument("--checkpoints", nargs="+", default=None, metavar="CKPT",
                       help="candidate checkpoint files (UDAUNet state dicts), e.g. every epoch of one run; "
                            "with --source")
    sel.add_argument("--source", default=None, help="the source model's checkpoint (the reference), with --checkpoints")
    sel.add_argument("--seed", type=int, default=None, help="with --bench: the seed whose models compete "
                     "(None: the first seed of results.csv)")
    sel.add_argument("--validators", nargs="+", default=None, metavar="NAME",
                     help="validators to run, space or comma separated (None: entropy, im, source_agreement, "
                          "consensus, mixval, foreground_fraction, component_sizes; also available: w2_shift, tta, "
                          "mc_dropout)")
    sel.add_argument("--rule", default="default", help="'default' (mean rank over im, mixval, foreground_fraction, "
                     "component_sizes), one validator, or a comma-separated list whose mean rank decides")
    sel.add_argument("--out", default="results/selection", help="output folder (selection.csv, .png, .json)")
    sel.add_argument("--limit", type=int, default=None, help="score on the first N target_training images only")
    sel.add_argument("--label-limit", type=int, default=16,
                     help="read at most this many source_training labels for the source-label prior")
    sel.add_argument("--roi-size", type=int, nargs="+", default=None,
                     help="sliding-window size (None: 128 per axis in 2D, 64 in 3D, as the bundles evaluate)")
    sel.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    sel.add_argument("--write-bundle", default=None, metavar="DIR",
                     help="also write the chosen model as a MONAI bundle folder MONAI Label can serve "
                          "(DIR/models/model.pt, DIR/configs/ of bundles/source_segmentation, scores in metadata.json)")
    threads_option(sel)
    sel.set_defaults(fn=cmd_select)
    return p


def _close_progress_bars() -> None:
    """End the line of a progress bar an error interrupted, so that the error gets a line of its own."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with MONAI's dependencies
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.debug:
        out = getattr(args, "out", None) if args.cmd in ("demo", "benchmark") else None
        _quiet_engines(os.path.join(out, LOG_NAME) if out else None)
    if getattr(args, "verbose", False):  # progress bars that follow the log level (PAST's translation) show too
        logging.getLogger("monai_uda").setLevel(logging.INFO)
    try:
        if hasattr(args, "threads"):
            from monai_uda.threads import configure_threads

            print(configure_threads(num_workers=0, threads=args.threads), flush=True)
        return int(args.fn(args) or 0)
    except Exception as e:
        cause = user_error(e)
        if args.debug or cause is None:
            raise
        _close_progress_bars()
        print(f"monai-uda {args.cmd}: error: {error_message(cause)} (--debug shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
