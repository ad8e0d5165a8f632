"""Score candidate models on unlabelled target images: one row per candidate, one column per validator.

:func:`score_candidates` runs each candidate once over the images (:func:`predict_probabilities`, timed as
``inference_seconds``), hands the probabilities to every validator (timed together as
``validator_seconds``, which includes their extra forward passes), and keeps only the argmax maps of a
candidate once it is scored, plus the source model's probabilities. Validators that compare a candidate
with all the others (``consensus``) run last, on the stored argmax maps. Memory: one candidate's
float16 probabilities, the source's, and one byte per pixel per candidate.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from monai.inferers import Inferer
from tqdm.auto import tqdm

from .predictions import Candidate, Predictions, check_images, predict_probabilities
from .registry import get_validator, validator_needs

__all__ = ["TIMING_COLUMNS", "CHEAP_VALIDATORS", "default_validators", "why_unavailable", "score_candidates"]

TIMING_COLUMNS = ("inference_seconds", "validator_seconds")

#: the validators that need at most about one extra inference pass, in the order of :func:`default_validators`
CHEAP_VALIDATORS = ("entropy", "im", "source_agreement", "consensus", "mixval", "foreground_fraction",
                    "component_sizes")


def why_unavailable(name: str, num_candidates: int, num_images: int, has_source: bool,
                    has_statistics: bool) -> str | None:
    """Why the validator ``name`` cannot score here (an input its ``needs`` declares is missing), or None."""
    needs = validator_needs(name)
    if "source" in needs and not has_source:
        return "no source model"
    if "source_statistics" in needs and not has_statistics:
        return "no source label statistics"
    if "others" in needs and num_candidates < 2:
        return "compares candidates: needs at least two"
    if "image_pairs" in needs and num_images < 2:
        return "needs two target images"
    return None


def default_validators(num_candidates: int, num_images: int, has_source: bool, has_statistics: bool) -> list[str]:
    """The validators that need at most about one extra inference pass and whose inputs are available."""
    return [n for n in CHEAP_VALIDATORS
            if why_unavailable(n, num_candidates, num_images, has_source, has_statistics) is None]


def score_candidates(candidates: Mapping[str, torch.nn.Module], images: Sequence[torch.Tensor],
                     source_name: str = "source", validators: Sequence[str] | None = None,
                     inferer: Inferer | None = None, device: str | torch.device = "cpu", progress: bool = True,
                     source_statistics: Any = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                     ) -> pd.DataFrame:
    """Every validator's score of every candidate (higher = predicted better).

    Args:
        candidates: name -> network (logits ``(B, num_classes, *spatial)``); each is moved to ``device``.
        images: unlabelled target images ``(C, *spatial)``.
        source_name: the candidate that is the source model (the reference of ``source_agreement`` and of
            :func:`~monai_uda.validators.selection.select`); it may be absent when no validator needs it.
        validators: registered names; default :func:`default_validators` (the cheap ones whose inputs exist).
        inferer: a MONAI inferer (``SlidingWindowInferer`` for large images); ``SimpleInferer`` by default.
        device: where the networks run.
        progress: show a tqdm progress bar.
        source_statistics: :func:`~monai_uda.validators.label_statistics.source_label_statistics` of the
            source labels, for ``foreground_fraction`` and ``component_sizes``.
        options: validator name -> keyword arguments, e.g. ``{"mc_dropout": {"num_samples": 4}}``.

    Returns:
        A DataFrame indexed by candidate name (source first), with one column per validator and
        ``inference_seconds`` (one plain pass) and ``validator_seconds`` (all validators).
    """
    if not isinstance(candidates, Mapping) or not candidates:
        raise ValueError("candidates must be a non-empty dict of name -> network")
    for name, network in candidates.items():
        if not isinstance(network, torch.nn.Module):
            raise ValueError(f"candidates[{name!r}] is a {type(network).__name__}, not a torch.nn.Module")
    images = check_images(images)
    has_source = source_name in candidates
    names = list(validators) if validators is not None else default_validators(
        len(candidates), len(images), has_source, source_statistics is not None)
    fns = {n: get_validator(n) for n in names}
    options = dict(options or {})
    if set(options) - set(names):
        raise ValueError(f"options for validators not run: {sorted(set(options) - set(names))}")
    # a missing input is refused before any inference, not after it
    detail = {"no source model": f"needs the source model: source_name {source_name!r} is not a candidate",
              "no source label statistics": "needs source_statistics (source_label_statistics of the source labels)"}
    for n in names:
        why = why_unavailable(n, len(candidates), len(images), has_source, source_statistics is not None)
        if why:
            raise ValueError(f"validator {n!r} {detail.get(why, f'cannot score here: {why}')}")
    deferred = [n for n in names if "others" in validator_needs(n)]
    order = ([source_name] if has_source else []) + [n for n in candidates if n != source_name]
    source_network = candidates.get(source_name)

    rows: dict[str, dict[str, float]] = {name: {} for name in order}
    argmaxes: dict[str, list[torch.Tensor]] = {}
    source_probabilities, num_classes = None, None
    for name in tqdm(order, desc="scoring candidates", unit="model", disable=not progress):
        start = time.perf_counter()
        probabilities = predict_probabilities(candidates[name], images, inferer, device)
        rows[name]["inference_seconds"] = time.perf_counter() - start
        if name == source_name:
            source_probabilities = probabilities
        try:
            predictions = Predictions(probabilities, source_probabilities=source_probabilities)
        except ValueError as e:
            raise ValueError(f"candidate {name!r}: {e}") from None
        num_classes = predictions.num_classes
        candidate = Candidate(name, predictions, candidates[name], images, inferer, device, source_network,
                              source_statistics)
        start = time.perf_counter()
        for n in names:
            if n not in deferred:
                rows[name][n] = float(fns[n](candidate, **options.get(n, {})))
        rows[name]["validator_seconds"] = time.perf_counter() - start
        if deferred:
            argmaxes[name] = predictions.argmax
        del predictions, candidate, probabilities
    for name in order if deferred else []:
        start = time.perf_counter()
        predictions = Predictions(argmax=argmaxes[name], num_classes=num_classes,
                                  others_argmax=[argmaxes[o] for o in order if o != name])
        candidate = Candidate(name, predictions, candidates[name], images, inferer, device, source_network,
                              source_statistics)
        for n in deferred:
            rows[name][n] = float(fns[n](candidate, **options.get(n, {})))
        rows[name]["validator_seconds"] += time.perf_counter() - start
    df = pd.DataFrame.from_dict(rows, orient="index")[names + list(TIMING_COLUMNS)]
    df.index.name = "candidate"
    return df
