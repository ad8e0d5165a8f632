"""What a label-free validator predicts of the model an adaptation bundle holds, recorded beside its checkpoint.

Each adaptation bundle ends its ``run`` with :func:`record_validator_scores`: the adapted checkpoint (the one its
``inference.json`` serves) and the source model it started from are scored on the unlabelled ``target_training``
images with validators of :mod:`monai_uda.validators` (no target label is read), and
``models/model.validators.json`` (beside ``model.pt``; :func:`validator_scores_path`) records every score of both,
the default rule's verdict (:func:`monai_uda.validators.select`: adapted, or "keep the source model") and its reason.
A user without target labels reads there whether the adaptation is predicted to have helped. ``monai-uda select``
does the same over many candidates; ``--write-bundle`` writes its choice into a bundle's ``metadata.json``.

The configs' key ``record_validators`` lists the validators (``[]`` or null: record nothing; the benchmark turns it
off, as its own ``selected`` row and validator study score every model).
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import math
import os
from typing import Any, Sequence

import torch

from monai_uda.utils import atomic_write_text

from .stages import load_network, preserved_random_state

__all__ = ["DEFAULT_RECORD_VALIDATORS", "record_validator_scores", "validator_scores_path"]

logger = logging.getLogger(__name__)

#: the cheap validators (about one extra inference pass) of ``monai-uda select``, whose inputs an adaptation has
DEFAULT_RECORD_VALIDATORS = ("entropy", "im", "source_agreement", "mixval", "foreground_fraction", "component_sizes")


def validator_scores_path(checkpoint: str | os.PathLike) -> str:
    """``models/model.pt`` -> ``models/model.validators.json``."""
    return os.path.splitext(os.fspath(checkpoint))[0] + ".validators.json"


def _weights(template: torch.nn.Module, path: str, device: Any) -> torch.nn.Module:
    """A copy of ``template`` (a DDP wrapper unwrapped) with the weights of ``path``; errors name the file."""
    net = copy.deepcopy(template.module if hasattr(template, "module") else template)
    return load_network(net, path, device).to(device).eval()


def _names(validators: str | Sequence[str]) -> list[str]:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]``; an unknown name raises, naming the config key."""
    from monai_uda.validators.registry import get_validator

    names = [n.strip() for n in validators.split(",")] if isinstance(validators, str) else [str(n) for n in validators]
    names = [n for n in names if n]
    for n in names:
        try:
            get_validator(n)
        except ValueError as e:
            raise ValueError(f"record_validators: {e}") from None
    return names


def _finite(v: Any) -> float | None:
    """A score for strict JSON: ``-inf`` (e.g. ``component_sizes`` of a model without foreground) or NaN -> None."""
    v = float(v)
    return v if math.isfinite(v) else None


def record_validator_scores(
    checkpoint: str | os.PathLike,
    network: torch.nn.Module,
    uda: Any,
    source_checkpoint: str | os.PathLike | None = None,
    validators: str | Sequence[str] | None = DEFAULT_RECORD_VALIDATORS,
    roi_size: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    limit: int | None = 32,
    label_limit: int | None = 16,
    strict: bool = False,
) -> str | None:
    """Score ``checkpoint`` (and the source model) on ``target_training`` images; write and return the record's path.

    Args:
        checkpoint: the adapted model the bundle holds (a state dict of ``network``'s architecture).
        network: a network of that architecture (the config's ``network`` or ``network_def``; it is copied, never
            changed).
        uda: the run's :class:`~monai_uda.data.UDAData` (its ``target_training`` images; its ``source_training``
            labels for the source-label prior of ``foreground_fraction`` and ``component_sizes``).
        source_checkpoint: the source model the adaptation started from; None: no source row, so no
            ``source_agreement`` and no "keep the source model" verdict (a path that does not exist is recorded as
            ``source_missing``).
        validators: registered validator names (a list, or one comma-separated string); those whose inputs are
            missing are left out and listed with the reason. Empty or None: nothing is recorded (returns None).
        roi_size: sliding-window size (default: the bundles' evaluation windows, 128² or 64³).
        device: where the networks run.
        limit: score on the first ``limit`` target images (default 32: the cost stays bounded on large target sets;
            None: all); ``label_limit``: source labels for the prior.
        strict: raise on any error. Default False: the record comes after the adapted model is saved, so an error
            (an unknown validator name, a source model that does not load, memory) is printed as one line and the
            run still ends well (returns None).

    Scores that are not finite (``component_sizes`` of a model that predicts no foreground is ``-inf``) are written as
    null, so the file is strict JSON; the timings go under ``seconds``. The global random state is left as it was.
    """
    if not validators:
        return None
    try:
        return _record(os.fspath(checkpoint), network, uda, source_checkpoint, _names(validators), roi_size,
                       torch.device(device), limit, label_limit)
    except Exception as e:
        if strict:
            raise
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        logger.warning("validator scores of %s not recorded: %s", checkpoint, msg)
        print(f"validator scores of {os.fspath(checkpoint)} not recorded (the adapted model is saved): {msg}",
              flush=True)
        return None


def _record(checkpoint: str, network: torch.nn.Module, uda: Any, source_checkpoint: Any, validators: list[str],
            roi_size: Sequence[int] | None, device: torch.device, limit: int | None, label_limit: int | None) -> str:
    from monai_uda.validators import score_candidates, select
    from monai_uda.validators.candidates import default_inferer, source_statistics, target_images
    from monai_uda.validators.registry import validator_needs
    from monai_uda.validators.score import TIMING_COLUMNS, why_unavailable
    from monai_uda.validators.selection import DEFAULT_RULE

    source = os.fspath(source_checkpoint) if source_checkpoint else None
    source_missing = source is not None and not os.path.isfile(source)
    with preserved_random_state(), torch.no_grad():
        candidates = {"adapted": _weights(network, checkpoint, device)}
        if source is not None and not source_missing:
            candidates = {"source": _weights(network, source, device), **candidates}
        images = target_images(uda, limit)
        missing = {}
        names = []
        for n in validators:
            needs = validator_needs(n)
            # the record scores two models, too few for a validator that compares every candidate
            why = "compares many candidates (monai-uda select)" if "others" in needs else why_unavailable(
                n, len(candidates), len(images), "source" in candidates, has_statistics=True)
            if why and "source" in needs and source_missing:
                why = f"source model not found: {source}"
            if why:
                missing[n] = why
            else:
                names.append(n)
        needs_prior = any("source_statistics" in validator_needs(n) for n in names)
        prior = source_statistics(uda, label_limit) if needs_prior else None
        df = score_candidates(candidates, images, source_name="source", validators=names,
                              inferer=default_inferer(uda.spatial_dims, roi_size), device=device, progress=False,
                              source_statistics=prior)
    rule = [c for c in DEFAULT_RULE if c in df.columns]
    chosen, reason = select(df, "default", source_name="source") if rule and len(df) > 1 else (None, "")
    timing = [c for c in df.columns if c in TIMING_COLUMNS]
    record = {
        "checkpoint": os.path.abspath(checkpoint),
        "source_checkpoint": os.path.abspath(source) if "source" in candidates else None,
        **({"source_missing": source} if source_missing else {}),
        "datalist": getattr(uda, "name", None),
        "target_images": len(images),
        "validators": names,
        "left_out": missing,
        "scores": {name: {c: _finite(row[c]) for c in df.columns if c not in timing} for name, row in df.iterrows()},
        "seconds": {name: {c: _finite(row[c]) for c in timing} for name, row in df.iterrows()},
        "rule": rule,
        "predicted": chosen,
        "reason": reason,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    path = atomic_write_text(validator_scores_path(checkpoint), json.dumps(record, indent=2, allow_nan=False))
    verdict = f"; {reason}" if reason else ""
    print(f"validator scores of {checkpoint} on {len(images)} target_training image(s) (no labels) -> {path}{verdict}",
          flush=True)
    return path
