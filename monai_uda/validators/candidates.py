"""The candidates of a selection and the images they are scored on, read from disk.

Two sources of candidates, each giving a :class:`CandidateSet` (name -> network, the reference named ``"source"``):

- :func:`bench_candidates`: a ``monai-uda benchmark`` output folder. ``results.csv`` lists its ``(method, seed)``
  rows; the model of one seed's method is ``<bench>/seed<k>/<method>/model.pt`` (a plain ``UDAUNet`` state dict),
  the source model ``<bench>/seed<k>/source/model.pt``. A method whose summary (``adapt_summary.json``) names its
  evaluated checkpoint is read from there; :data:`METHOD_CHECKPOINTS` lists the other exceptions. Methods that are
  not label-free candidates or not ``UDAUNet`` state dicts are skipped with their reason (:data:`SKIP_METHODS`:
  the oracle, trained on target labels; ``rf`` and ``enhancer``, which the benchmark evaluates through their own
  ``network_def``), and so is a method whose checkpoint is missing or does not fit the network.
- :func:`checkpoint_candidates`: a list of checkpoint files (e.g. every epoch checkpoint of one run) and the
  source model; each candidate is named by the shortest end of its path that tells it from the others.

The target images are the datalist's ``target_training`` split only (:func:`target_images`), loaded with the
bundles' ``"target"`` transforms (images, never labels). :func:`source_statistics` reads *source* labels
(``source_training``, capped) for the ``foreground_fraction`` / ``component_sizes`` prior. Nothing here opens
a target label.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

__all__ = ["SOURCE", "SKIP_METHODS", "WEAKLY_SUPERVISED", "METHOD_CHECKPOINTS", "CandidateError", "CandidateSet",
           "load_weights", "bench_candidates", "seed_candidates", "checkpoint_candidates", "as_uda", "target_images",
           "source_statistics", "default_inferer"]

#: the name of the reference candidate (the source-only model)
SOURCE = "source"

#: benchmark methods that are never candidates, and why
SKIP_METHODS = {
    "oracle": "trained on target labels (the benchmark's upper bound), not a model a label-free selection may pick",
    "rf": "the benchmark evaluates it through its own network_def (a target random forest, ForestEnhancerNet), "
          "not a UDAUNet state dict",
    "enhancer": "the benchmark evaluates it through its own network_def (forest + Prediction Enhancer, "
                "ForestEnhancerNet), not a UDAUNet state dict",
}

#: benchmark methods that are candidates but learned from target annotations: shallow-to-deep's pseudo-label
#: networks train on a target Random Forest's output, and that forest on a user's brushstrokes on target images
#: (simulated from target labels in the benchmark). A user without any target annotation does not have them;
#: ``scripts/validator_study.py`` measures the rule with and without them
WEAKLY_SUPERVISED = {m: "learned from brushstrokes on target images (shallow-to-deep's target forest)"
                     for m in ("s2d", "s2d_noteacher", "s2d_norect")}

#: a method's evaluated checkpoint inside ``<bench>/seed<k>/<method>/`` when it is neither named by the method's
#: ``adapt_summary.json`` nor ``model.pt`` (PAST's ``model.pt`` there is the network before self-training)
METHOD_CHECKPOINTS = {"past": os.path.join("self_train", "model.pt")}


class CandidateError(ValueError):
    """A candidate cannot be loaded; the message names the file."""


@dataclass
class CandidateSet:
    """Networks to score, the reference first.

    Attributes:
        networks: name -> network with its weights loaded (``source_name`` first).
        checkpoints: name -> the file its weights came from.
        skipped: name -> why it is not a candidate.
        source_name: the reference (the source-only model).
        description: where the candidates came from, in words.
    """

    networks: dict[str, torch.nn.Module]
    checkpoints: dict[str, str]
    skipped: dict[str, str] = field(default_factory=dict)
    source_name: str = SOURCE
    description: str = ""

    def skipped_message(self) -> str:
        """One line listing the skipped candidates and why ("" when none was skipped)."""
        if not self.skipped:
            return ""
        return f"skipped {len(self.skipped)}: " + "; ".join(f"{k} ({v})" for k, v in self.skipped.items())


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def load_weights(network: torch.nn.Module, path: str | os.PathLike) -> torch.nn.Module:
    """Load a checkpoint into ``network``: a plain state dict, or one under ``"model"``/``"state_dict"``/``"network"``.

    Raises:
        FileNotFoundError: no such file.
        CandidateError: not a state dict, or not one of this network (one line naming the file).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage, truncated, or a pickle of arbitrary objects
        raise CandidateError(f"{path} is not a PyTorch state dict ({type(e).__name__})") from None
    if isinstance(state, dict):
        for key in ("model", "state_dict", "network"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CandidateError(f"{path} holds no state dict of tensors ({type(state).__name__})")
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise CandidateError(f"{path} does not fit {type(network).__name__} (another architecture, spatial_dims, "
                             f"channel or class count?): {_one_line(e)[:300]}") from None
    return network


def _results_csv(bench: str) -> str:
    for path in (os.path.join(bench, "results.csv"), os.path.join(bench, ".partial", "results.csv")):
        if os.path.isfile(path):
            return path
    if not os.path.isdir(bench):
        raise FileNotFoundError(f"benchmark folder not found: {bench}")
    raise FileNotFoundError(f"{os.path.join(bench, 'results.csv')} not found: --bench takes the output folder of a "
                            "`monai-uda benchmark` run")


def _method_checkpoint(folder: str, method: str) -> str | None:
    """The evaluated checkpoint of ``method`` in its folder ``<bench>/seed<k>/<method>``, or None."""
    if method in METHOD_CHECKPOINTS:
        path = os.path.join(folder, METHOD_CHECKPOINTS[method])
        return path if os.path.isfile(path) else None
    summary = os.path.join(folder, "adapt_summary.json")
    if os.path.isfile(summary):
        try:
            with open(summary) as f:
                named = json.load(f).get("checkpoint")
        except (OSError, ValueError, AttributeError):
            named = None
        if isinstance(named, str):
            # the summary's path may be absolute from another machine, or relative to where the run started
            for path in (named, os.path.join(folder, os.path.basename(named))):
                inside = os.path.realpath(path).startswith(os.path.realpath(folder) + os.sep)
                if os.path.isfile(path) and inside:
                    return path
    path = os.path.join(folder, "model.pt")
    return path if os.path.isfile(path) else None


def bench_candidates(bench: str | os.PathLike, network_factory: Callable[[], torch.nn.Module],
                     seed: int | None = None, methods: Sequence[str] | None = None) -> CandidateSet:
    """The models of one seed of a benchmark folder.

    Args:
        bench: a ``monai-uda benchmark`` output folder (``results.csv``, ``seed<k>/<method>/model.pt``).
        network_factory: builds an empty network of the benchmark's architecture, e.g.
            ``lambda: UDAUNet(spatial_dims, in_channels, num_classes)``, as the benchmark evaluates it.
        seed: the seed whose models compete (default: the first seed of ``results.csv``).
        methods: keep only these methods (the source model is always kept).

    Raises:
        FileNotFoundError, ValueError: no ``results.csv``, no such seed, or no loadable source model
            (one line naming the file).
    """
    import pandas as pd

    bench = os.fspath(bench)
    csv = _results_csv(bench)
    try:
        df = pd.read_csv(csv)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise ValueError(f"{csv} is not a benchmark results table: {_one_line(e)}") from None
    missing = [c for c in ("method", "seed") if c not in df.columns]
    if missing:
        raise ValueError(f"{csv} has no {' or '.join(repr(c) for c in missing)} column: not a benchmark results table")
    seeds = sorted({int(s) for s in df["seed"].dropna()})
    if not seeds:
        raise ValueError(f"{csv} has no rows")
    if seed is None:
        seed = seeds[0]
    if int(seed) not in seeds:
        raise ValueError(f"{csv} has no rows of seed {seed}; its seeds: {', '.join(map(str, seeds))}")
    seed = int(seed)
    listed = list(dict.fromkeys(str(m) for m in df.loc[df["seed"] == seed, "method"]))
    if methods is not None:
        unknown = [m for m in methods if m not in listed and m != SOURCE]
        if unknown:
            raise ValueError(f"{csv}: no rows of method(s) {', '.join(unknown)} for seed {seed}; "
                             f"its methods: {', '.join(listed)}")
        listed = [m for m in listed if m in methods]
    names = [SOURCE] + [m for m in listed if m != SOURCE]
    found = seed_candidates(os.path.join(bench, f"seed{seed}"), names, network_factory)
    others = f" of {', '.join(map(str, seeds))}" if len(seeds) > 1 else ""
    found.description = f"benchmark {bench}, seed {seed}{others}"
    return found


def seed_candidates(folder: str | os.PathLike, names: Sequence[str],
                    network_factory: Callable[[], torch.nn.Module]) -> CandidateSet:
    """The models of ``names`` (methods, the source model first) in one seed's folder ``<bench>/seed<k>``.

    A method in :data:`SKIP_METHODS`, without a checkpoint, or whose checkpoint does not fit the network is
    skipped with its reason; a missing or unloadable source model raises (one line naming the file).
    """
    folder = os.fspath(folder)
    networks: dict[str, torch.nn.Module] = {}
    checkpoints: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name in SKIP_METHODS:
            skipped[name] = SKIP_METHODS[name]
            continue
        path = _method_checkpoint(os.path.join(folder, name), name)
        if path is None:
            if name == SOURCE:
                raise FileNotFoundError(f"no source model in {os.path.join(folder, SOURCE)} (model.pt): the "
                                        "reference of the selection")
            skipped[name] = f"no checkpoint in {os.path.join(folder, name)}"
            continue
        try:
            networks[name] = load_weights(network_factory(), path)
        except (OSError, ValueError) as e:
            if name == SOURCE:
                raise
            skipped[name] = _one_line(e)
            continue
        checkpoints[name] = path
    return CandidateSet(networks, checkpoints, skipped, SOURCE, f"{folder}")


def _short_names(paths: Sequence[str], reserved: Sequence[str] = ()) -> list[str]:
    """For each path, the shortest end of it (``model``, ``bn/model``, ...; without ``.pt``) that is unique."""
    parts = [os.path.normpath(os.path.abspath(p)).split(os.sep) for p in paths]
    parts = [[*p[:-1], os.path.splitext(p[-1])[0] if p[-1].endswith((".pt", ".pth")) else p[-1]] for p in parts]
    names = [""] * len(paths)
    for i, p in enumerate(parts):
        for depth in range(1, len(p) + 1):
            name = "/".join(p[-depth:])
            clash = any("/".join(q[-depth:]) == name for j, q in enumerate(parts) if j != i)
            if not clash and name not in reserved:
                names[i] = name
                break
        else:
            names[i] = f"{'/'.join(p)}#{i}"
    return names


def checkpoint_candidates(checkpoints: Sequence[str | os.PathLike], source: str | os.PathLike,
                          network_factory: Callable[[], torch.nn.Module],
                          names: Sequence[str] | None = None) -> CandidateSet:
    """A list of checkpoint files and the source model.

    Args:
        checkpoints: the candidates' files (state dicts of the network ``network_factory`` builds).
        source: the source model's file (the reference, named ``"source"``).
        network_factory: builds an empty network of the checkpoints' architecture.
        names: the candidates' names (default: the shortest unique end of each path, without ``.pt``).

    Raises:
        FileNotFoundError, CandidateError: a file is missing or is not a state dict of the network (one line naming
            the file).
    """
    paths = [os.fspath(p) for p in checkpoints]
    if not paths:
        raise ValueError("--checkpoints: no checkpoint file given")
    if names is not None and len(names) != len(paths):
        raise ValueError(f"{len(names)} names for {len(paths)} checkpoints")
    source = os.fspath(source)
    names = list(names) if names is not None else _short_names(paths, reserved=[SOURCE])
    if SOURCE in names:
        raise ValueError(f"the name {SOURCE!r} is the reference's (--source); rename that candidate")
    networks = {SOURCE: load_weights(network_factory(), source)}
    files = {SOURCE: source}
    skipped: dict[str, str] = {}
    seen = {os.path.realpath(source): SOURCE}
    for name, path in zip(names, paths):
        real = os.path.realpath(path)
        if real in seen:
            skipped[name] = f"the same file as {seen[real]!r}"
            continue
        networks[name] = load_weights(network_factory(), path)
        files[name] = path
        seen[real] = name
    return CandidateSet(networks, files, skipped, SOURCE, f"{len(files) - 1} checkpoint(s) and the source {source}")


def as_uda(datalist: Any) -> Any:
    """A :class:`~monai_uda.data.UDAData` from a datalist path (checked without opening any file), or as given."""
    if isinstance(datalist, (str, os.PathLike)):
        from monai_uda.data import UDAData

        return UDAData(datalist, deep=False)  # deep=True would open every file, target labels included
    return datalist


def _load(items: list[dict], transform: Callable, key: str, field_name: str) -> list[torch.Tensor]:
    out = []
    for i, item in enumerate(items):
        try:
            value = transform(dict(item))[field_name]
        except Exception as e:  # MONAI wraps the reader's error; name the file
            cause = e
            while cause.__cause__ is not None or cause.__context__ is not None:
                cause = cause.__cause__ or cause.__context__
            raise ValueError(f"{key}[{i}] {item.get(field_name)}: cannot load: {_one_line(cause)}") from None
        value = value.as_tensor() if hasattr(value, "as_tensor") else torch.as_tensor(value)
        out.append(value)
    return out


def target_images(datalist: Any, limit: int | None = None) -> list[torch.Tensor]:
    """The ``target_training`` images ``(C, *spatial)`` (float32), as the bundles' ``"target"`` transforms load them.

    Args:
        datalist: a UDA datalist path or :class:`~monai_uda.data.UDAData`.
        limit: the first ``limit`` images only.
    """
    from monai_uda.transforms import segmentation_transforms

    uda = as_uda(datalist)
    items = uda.split("target_training", limit=limit)  # images only: this split never carries labels
    if any("label" in it for it in items):  # pragma: no cover - UDAData.split strips them; a guard, not a path
        raise ValueError("target_training items carry labels")
    return [x.float() for x in _load(items, segmentation_transforms("target", uda=uda), "target_training", "image")]


def source_statistics(datalist: Any, limit: int | None = 16) -> Any:
    """:func:`~monai_uda.validators.label_statistics.source_label_statistics` of the first ``limit`` source labels.

    The labels are read from ``source_training`` with the bundles' ``"eval"`` transforms (the datalist's
    ``label_map`` / ``binarize`` and 3D resampling applied), so that they count classes as the network predicts them.
    """
    from monai_uda.transforms import segmentation_transforms

    from .label_statistics import source_label_statistics

    uda = as_uda(datalist)
    items = uda.split("source_training", limit=limit)
    labels = _load(items, segmentation_transforms("eval", uda=uda), "source_training", "label")
    return source_label_statistics(labels, num_classes=uda.num_classes, spatial_dims=uda.spatial_dims)


def default_inferer(spatial_dims: int, roi_size: Sequence[int] | None = None, sw_batch_size: int = 4) -> Any:
    """The sliding-window inferer of the bundles' evaluation: 128² (2D) or 64³ (3D) windows, overlap 0.25."""
    from monai.inferers import SlidingWindowInferer

    roi = list(roi_size) if roi_size else ([128] * spatial_dims if spatial_dims == 2 else [64] * spatial_dims)
    if len(roi) == 1:
        roi = roi * spatial_dims
    return SlidingWindowInferer(roi_size=roi, sw_batch_size=sw_batch_size, overlap=0.25)
