"""Earlier stages of a bundle run: "the stage's output, or run that stage first", and network checkpoints.

Every bundle config that needs the product of an earlier stage (a source model, a stage-2 head, source
forests, a trained enhancer) calls :func:`ensure_stage`; adaptation bundles get their source model from
:func:`resolve_source_checkpoint`, so they run on the demo pair with no argument.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any, Iterator, Mapping, Sequence

import torch

from monai_uda.utils import atomic_json, atomic_torch_save

__all__ = ["ensure_stage", "resolve_source_checkpoint", "DEMO_SOURCE_BUDGET", "save_network", "load_network",
           "load_state_dict", "CheckpointError", "write_model_card", "clear_model_card", "check_source_checkpoint",
           "model_card_path",
           "evaluated_checkpoint", "preserved_random_state"]

logger = logging.getLogger(__name__)

#: a short source training, enough for the demo pair; real work passes its own checkpoint
DEMO_SOURCE_BUDGET = {"max_epochs": 8, "epoch_length": 10, "batch_size": 4, "num_samples": 2,
                      "validate_during_training": False}


@contextlib.contextmanager
def preserved_random_state() -> Iterator[None]:
    """Run a block without changing the global random state (Python, NumPy, torch CPU and CUDA, MONAI's seed).

    A stage that :func:`ensure_stage` runs inside another run calls ``set_determinism`` and draws numbers; without
    this, the calling run would continue from the stage's random state when the stage ran, and from its own when
    the stage's product was reused, so a run resumed after a stage would not repeat an uninterrupted one.
    """
    import random

    import monai.utils.misc as monai_misc
    import numpy as np

    py, npy, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    seed = getattr(monai_misc, "_seed", None)
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        if hasattr(monai_misc, "_seed"):
            monai_misc._seed = seed
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def _stage_record(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.stage.json")


def _stage_key(bundle: str, configs: Sequence[str], overrides: Mapping[str, Any]) -> Any:
    return json.loads(json.dumps({"bundle": bundle, "configs": list(configs), "overrides": dict(overrides)},
                                 default=str, sort_keys=True))


def ensure_stage(
    path: str,
    bundle: str,
    config: str | Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    workflow_type: str | None = "train",
    rerun_if_changed: bool = False,
) -> str:
    """``path`` if it exists, else run ``config`` of ``bundle`` with ``overrides`` to produce it; returns ``path``.

    Args:
        path: the stage's product (a checkpoint, a forest file).
        bundle: the bundle folder name (``source_segmentation``, ``shallow2deep_segmentation``...).
        config: the config file(s) of the stage, layered in order.
        overrides: config overrides of the stage run.
        workflow_type: passed to ``ConfigWorkflow`` (None for configs that are neither train nor infer).
        rerun_if_changed: the settings of a run are recorded next to ``path``; when ``path`` exists but
            was made with other settings, run the stage again (without a record, ``path`` is reused).

    Raises:
        FileNotFoundError: the stage finished without writing ``path``.
    """
    path = os.fspath(path)
    configs = [config] if isinstance(config, str) else list(config)
    overrides = dict(overrides or {})
    key = _stage_key(bundle, configs, overrides)
    record = _stage_record(path)
    if os.path.isfile(path):
        if not (rerun_if_changed and os.path.isfile(record)):
            return path
        with open(record) as f:
            if json.load(f) == key:
                logger.info("reusing %s (same settings)", path)
                return path
        logger.warning("%s was made with other settings: running %s %s again", path, bundle, configs)
    from .run import run_bundle

    logger.info("%s not found: running %s %s to create it", path, bundle, configs)
    with preserved_random_state():  # the calling run goes on as if the stage had been reused: resume is exact
        run_bundle(bundle, configs, workflow_type=workflow_type, **overrides)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"running bundle {bundle!r} {configs} did not write the expected file {path}.")
    atomic_json(key, record)
    return path


def evaluated_checkpoint(path: str, adapt_config: str = "configs/adapt.json", resume_key: str | None = None) -> str:
    """The adapted model an ``evaluate.json`` layer evaluates: ``path`` as it is, said in one printed line.

    ``--config_file "['configs/adapt.json','configs/evaluate.json']"`` runs the evaluation only (the layer
    replaces ``run``): the model an earlier ``adapt_config`` run wrote is evaluated, and nothing is adapted. The
    line names the file, its time and how to adapt again (``adapt_config`` alone, with ``--<resume_key> false``
    where that config resumes finished work).

    Raises:
        FileNotFoundError: no adapted model yet; the message gives the command that makes it.
    """
    path = os.fspath(path)
    again = f"run {adapt_config} alone" + (f" with --{resume_key} false" if resume_key else "")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no adapted model at {path}: evaluate.json evaluates what {adapt_config} "
                                f"wrote and does not adapt; {again} first (same overrides), then evaluate")
    import time

    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(path)))
    print(f"evaluate: evaluating the existing adapted model {path} (written {when}); this run does not adapt "
          f"again: to re-adapt, {again} (same overrides) before evaluating", flush=True)
    return path


def resolve_source_checkpoint(checkpoint: str | None, out_dir: str, **overrides: Any) -> str:
    """The source model to adapt: ``checkpoint`` if given, else ``out_dir/model.pt`` of the ``source_segmentation`` bundle.

    Without ``checkpoint``, the source bundle's ``train.json`` is run with ``overrides`` (datalist, budget,
    seed, device...); the result is reused while the overrides are unchanged and retrained otherwise.
    Adaptation bundles call this so that they run on the demo pair with no argument; for real data,
    train with ``bundles/source_segmentation`` (or bring your own ``UDAUNet`` weights) and pass
    ``--source_checkpoint``.

    Raises:
        FileNotFoundError: ``checkpoint`` is given but does not exist.
    """
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"source_checkpoint not found: {checkpoint}")
        return str(checkpoint)
    overrides = {"ckpt_dir": out_dir, "output_dir": out_dir, **overrides}
    return ensure_stage(os.path.join(out_dir, "model.pt"), "source_segmentation", "train.json", overrides,
                        rerun_if_changed=True)


class CheckpointError(ValueError):
    """A checkpoint file is not a state dict, or not one of this network; the message names the file."""


def load_state_dict(path: str, device: Any = "cpu") -> dict:
    """The state dict in ``path`` (a plain one, or MONAI's ``{"model": ...}``); one-line errors name the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # garbage, truncated, or a pickle of arbitrary objects (torch's hint would mislead)
        raise CheckpointError(f"{path} is not a PyTorch state dict ({type(e).__name__}); pass a model.pt written "
                              "by a monai-uda bundle") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict; pass a model.pt written by "
                              "a monai-uda bundle")
    return state


def model_card_path(path: str) -> str:
    """``models/model.pt`` -> ``models/model.card.json``: what a checkpoint was trained on."""
    return os.path.splitext(os.fspath(path))[0] + ".card.json"


def _images_fingerprint(uda: Any, key: str) -> str:
    """A short hash of a split's image files (name and size): the same data in another folder matches."""
    import hashlib

    files = sorted((os.path.basename(it["image"]), os.path.getsize(it["image"])) for it in uda.split(key))
    return hashlib.sha1(json.dumps(files).encode()).hexdigest()[:16]


def write_model_card(path: str, uda: Any, key: str = "source_training") -> str:
    """Record next to checkpoint ``path`` what it was trained on: the datalist's name, the split ``key``, a
    fingerprint of that split's images, spatial dims, channels and classes (see :func:`check_source_checkpoint`)."""
    card = {"datalist": uda.name, "trained_on": key, "images": _images_fingerprint(uda, key),
            "spatial_dims": uda.spatial_dims, "in_channels": uda.in_channels, "num_classes": uda.num_classes}
    return atomic_json(card, model_card_path(path))


def clear_model_card(path: str) -> None:
    """Remove the card of checkpoint ``path`` before a training writes it again: ``model.pt`` is rewritten at each
    best validation, and the card (written when training ends) is what tells a finished model from an interrupted
    one (the benchmark's ``--resume``, ``--source-from``), so an old card must not outlive the start of a new run."""
    card = model_card_path(path)
    if os.path.isfile(card):
        os.remove(card)


def check_source_checkpoint(path: str, uda: Any) -> str:
    """Refuse a source checkpoint that was not trained on this datalist's source images; returns ``path``.

    Checkpoints without a card (``model.card.json``, written by the source bundle) are the user's own
    weights and are taken as they are.

    Raises:
        CheckpointError: one line naming the checkpoint, what it was trained on and how to train the right one.
    """
    card_file = model_card_path(path)
    if not os.path.isfile(card_file):
        return path
    with open(card_file) as f:
        card = json.load(f)
    problems = [f"its {k} is {card.get(k)}, this datalist's {getattr(uda, k)}"
                for k in ("spatial_dims", "in_channels", "num_classes") if card.get(k) != getattr(uda, k)]
    if card.get("trained_on") != "source_training":
        problems.append(f"it was trained on {card.get('trained_on')}, not on source_training")
    elif card.get("images") != _images_fingerprint(uda, "source_training"):
        problems.append("its source images differ")
    if problems:
        raise CheckpointError(
            f"{path} was trained on datalist {card.get('datalist')!r}, not on the source data of {uda.name!r} "
            f"({'; '.join(problems)}): train a source model on this datalist (python -m monai.bundle run "
            "--config_file bundles/source_segmentation/configs/train.json --datalist <your datalist>) and pass "
            "its models/model.pt as --source_checkpoint")
    return path


def load_network(network: torch.nn.Module, path: str, device: Any = "cpu", uda: Any = None) -> torch.nn.Module:
    """Load a state dict (a plain one, or ``{"model": ...}``) into ``network``; errors name the file.

    With ``uda`` (the run's ``UDAData``), ``path`` is a source model and must have been trained on its source
    images (:func:`check_source_checkpoint`).
    """
    if uda is not None:
        check_source_checkpoint(path, uda)
    state = load_state_dict(path, device)
    try:
        network.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {type(network).__name__} (another architecture, spatial_dims or "
                              f"channel count?): {_mismatch(state, network)}") from None
    return network


def _mismatch(state: Mapping[str, Any], network: torch.nn.Module) -> str:
    """The first differences between a state dict and a network, in a few words (shapes, missing/extra keys)."""
    own = network.state_dict()
    shapes = [(k, list(v.shape), list(own[k].shape)) for k, v in state.items()
              if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    missing, extra = [k for k in own if k not in state], [k for k in state if k not in own]
    parts = []
    if shapes:
        k, theirs, ours = shapes[0]
        more = f" (and {len(shapes) - 1} more tensors)" if len(shapes) > 1 else ""
        parts.append(f"{k} is {theirs} in the checkpoint, {ours} in this network{more}")
    if missing:
        parts.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
    return "; ".join(parts) or "the state dict does not load"


def save_network(network: torch.nn.Module, path: str) -> str:
    """Save ``network.state_dict()`` atomically (temp file + ``os.replace``)."""
    net = network.module if hasattr(network, "module") else network
    return atomic_torch_save(net.state_dict(), path)
