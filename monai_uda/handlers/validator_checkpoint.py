"""`ValidatorCheckpointSelector`: keep the epoch a label-free validator predicts best, not the last one.

Every ``interval`` epochs of a trainer the handler scores the current network on unlabelled target images with
validators of :mod:`monai_uda.validators` (one plain inference pass shared by all, plus their own passes), keeps
the weights of the best-scoring epoch (a CPU copy in memory, and an atomic checkpoint file when ``path`` is given)
and, when the trainer completes, loads them back into the network (``load_best``). With ``score_initial`` the
network is also scored before the first epoch (the source model, for an adaptation), so that an adaptation that
never beats its starting point ends with its starting weights: the "keep the source model" rule of
:func:`~monai_uda.validators.select` applied along one run.

One validator decides (``key``; default the first of ``validators``); the others are logged beside it. A rule
over several validators ranks candidates against each other, which the handler cannot do for weights it has
already discarded, so it selects by one score. Validators that compare candidates with each other
(``consensus``) are refused; those that need the source model (``source_agreement``) need ``source_network``,
and those that need source-label statistics (``foreground_fraction``, ``component_sizes``) ``source_statistics``.

Logged into the engine's state: ``state.validator_history`` (one dict per scored epoch: ``epoch``, every
validator's score, ``seconds``) and ``state.validator_best`` (``epoch``, ``score``, ``key``). Generic: it imports
no method package; a method's validator (e.g. ``w2_shift`` of ``monai_uda.methods.bn_reestimation.w2_validator``)
is available once its module is imported.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from monai.inferers import Inferer

from monai_uda.utils import atomic_torch_save
from monai_uda.validators.predictions import Candidate, Predictions, check_images, predict_probabilities
from monai_uda.validators.registry import get_validator, validator_needs

__all__ = ["ValidatorCheckpointSelector"]

logger = logging.getLogger(__name__)


class ValidatorCheckpointSelector:
    """Score the network every ``interval`` epochs with label-free validators; keep and restore the best weights.

    Args:
        network: the network the trainer trains (its weights are copied and, at the end, replaced).
        images: unlabelled target images ``(C, *spatial)`` (e.g. ``target_training`` with the ``"target"``
            transforms; never labels), or dicts holding them under ``image_key``.
        validators: registered validator names (higher = better); default ``["im"]``.
        key: the validator that selects (default the first of ``validators``).
        interval: score every ``interval`` epochs; the last epoch is always scored.
        score_initial: also score the weights the trainer starts from (epoch 0), which then win ties.
        load_best: at completion, load the best weights into ``network``.
        path: also save the best weights there (an atomic ``torch.save`` of the state dict) whenever they change.
        source_network: the source model, for validators that need it (its probabilities are computed once).
        source_statistics: source-label statistics (:func:`~monai_uda.validators.source_label_statistics`).
        options: validator name -> keyword arguments.
        inferer: a MONAI inferer (``SimpleInferer`` by default); ``device``: where scoring runs (default: the
            network's device).
        image_key: the image key of dict items.
    """

    def __init__(self, network: torch.nn.Module, images: Sequence[Any], validators: Sequence[str] | None = None,
                 key: str | None = None, interval: int = 1, score_initial: bool = True, load_best: bool = True,
                 path: str | None = None, source_network: torch.nn.Module | None = None,
                 source_statistics: Any = None, options: Mapping[str, Mapping[str, Any]] | None = None,
                 inferer: Inferer | None = None, device: str | torch.device | None = None, image_key: str = "image"):
        if not isinstance(network, torch.nn.Module):
            raise ValueError(f"ValidatorCheckpointSelector network: a torch.nn.Module, got {type(network).__name__}")
        if isinstance(validators, str):
            validators = [validators]
        self.validators = list(validators) if validators is not None else ["im"]
        if not self.validators:
            raise ValueError("ValidatorCheckpointSelector validators: empty")
        self.key = key if key is not None else self.validators[0]
        if self.key not in self.validators:
            raise ValueError(f"ValidatorCheckpointSelector key {self.key!r} is not one of validators {self.validators}")
        self.fns = {n: get_validator(n) for n in self.validators}
        for n in self.validators:
            needs = validator_needs(n)
            if "others" in needs:
                raise ValueError(f"validator {n!r} compares candidates with each other; the handler scores one "
                                 "network at a time (use monai-uda select on saved checkpoints)")
            if "source" in needs and source_network is None:
                raise ValueError(f"validator {n!r} needs the source model: pass source_network")
            if "source_statistics" in needs and source_statistics is None:
                raise ValueError(f"validator {n!r} needs source_statistics (source_label_statistics of source labels)")
        self.options = {n: dict(o) for n, o in (options or {}).items()}
        unknown = set(self.options) - set(self.validators)
        if unknown:
            raise ValueError(f"options for validators not run: {sorted(unknown)}")
        if int(interval) < 1:
            raise ValueError(f"interval must be at least 1, got {interval}")
        self.network = network
        self.images = check_images([it[image_key] if isinstance(it, Mapping) else it for it in images])
        self.interval = int(interval)
        self.score_initial = score_initial
        self.load_best = load_best
        self.path = path
        self.source_network = source_network
        self.source_statistics = source_statistics
        self.inferer = inferer
        self.device = device
        self._source_probabilities: list[torch.Tensor] | None = None
        self.history: list[dict[str, float]] = []
        self.best_epoch: int | None = None
        self.best_score = -math.inf
        self.best_state: dict[str, torch.Tensor] | None = None

    # -- ignite -------------------------------------------------------------------------------
    def attach(self, engine: Engine) -> None:
        if self.score_initial:
            engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def _started(self, engine: Engine) -> None:
        if not self.history or self.history[0]["epoch"] != engine.state.epoch:
            self.score(engine, epoch=int(engine.state.epoch))

    def epoch_completed(self, engine: Engine) -> None:
        self.score(engine)

    def completed(self, engine: Engine) -> None:
        if not self.history or self.history[-1]["epoch"] != engine.state.epoch:
            self.score(engine)  # the last epoch, when the interval skipped it
        if self.load_best and self.best_state is not None:
            self.network.load_state_dict(self.best_state)
            logger.info("ValidatorCheckpointSelector: restored the weights of epoch %s (%s %.4g)", self.best_epoch,
                        self.key, self.best_score)

    # -- scoring ------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        if self.device is not None:
            return torch.device(self.device)
        ref = next(iter(self.network.parameters()), None)
        return ref.device if ref is not None else torch.device("cpu")

    def scores(self) -> dict[str, float]:
        """Every validator's score of the network as it is now."""
        device = self._device()
        if self.source_network is not None and self._source_probabilities is None:
            self._source_probabilities = predict_probabilities(self.source_network, self.images, self.inferer, device)
        probabilities = predict_probabilities(self.network, self.images, self.inferer, device)
        predictions = Predictions(probabilities, source_probabilities=self._source_probabilities)
        candidate = Candidate("current", predictions, self.network, self.images, self.inferer, device,
                              self.source_network, self.source_statistics)
        return {n: float(self.fns[n](candidate, **self.options.get(n, {}))) for n in self.validators}

    def score(self, engine: Engine | None = None, epoch: int | None = None) -> dict[str, float]:
        """Score the network now, keep its weights if they beat the best so far, log into ``engine.state``."""
        if epoch is None:
            epoch = int(engine.state.epoch) if engine is not None else len(self.history)
        start = time.perf_counter()
        row: dict[str, float] = {"epoch": epoch, **self.scores()}
        row["seconds"] = time.perf_counter() - start
        self.history = [r for r in self.history if r["epoch"] != epoch] + [row]
        value = row[self.key]
        if not math.isnan(value) and (self.best_state is None or value > self.best_score):
            self.best_epoch, self.best_score = epoch, value
            self.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.network.state_dict().items()}
            if self.path:
                atomic_torch_save(self.best_state, self.path)
        logger.info("ValidatorCheckpointSelector: epoch %s %s; best epoch %s", epoch,
                    ", ".join(f"{n} {row[n]:.4g}" for n in self.validators), self.best_epoch)
        if engine is not None:
            engine.state.validator_history = copy.deepcopy(self.history)
            engine.state.validator_best = {"epoch": self.best_epoch, "score": self.best_score, "key": self.key}
        return row

    def __call__(self, engine: Engine) -> None:
        self.score(engine)
