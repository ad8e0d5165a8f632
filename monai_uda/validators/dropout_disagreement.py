"""Disagreement of stochastic predictions: MC-dropout samples of one network, or an ensemble of networks.

``T`` softmax predictions of the same image are compared pixel by pixel, by one of:

- ``"mutual_information"`` (default): ``H(mean_t p_t) - mean_t H(p_t)``, the epistemic part of the
  predictive entropy (BALD: Houlsby, Huszár, Ghahramani and Lengyel, "Bayesian Active Learning for
  Classification and Preference Learning", 2011);
- ``"variance"``: the variance over the samples of each class probability, averaged over the classes.

The score is the negated mean over every pixel of every image (0 = the samples agree).

- ``mc_dropout``: the samples come from one network with its dropout layers active at test time (Gal and
  Ghahramani, "Dropout as a Bayesian Approximation: Representing Model Uncertainty in Deep Learning",
  ICML 2016). Only the dropout layers are switched to train mode; BatchNorm keeps its running statistics.
  A network without a dropout layer of ``p > 0`` is refused. The dropout masks are drawn from a seeded,
  forked RNG, so the caller's random state is untouched and scores repeat.
- :func:`ensemble_disagreement_score`: the samples are several networks' probabilities on the same
  images (Lakshminarayanan, Pritzel and Blundell, "Simple and Scalable Predictive Uncertainty Estimation
  using Deep Ensembles", NeurIPS 2017), e.g. the seeds of one adaptation method.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from monai.inferers import Inferer

from .entropy import pixel_entropy
from .predictions import Candidate, Predictions, check_images, eval_mode, predict_one
from .registry import register_validator

__all__ = ["MEASURES", "DROPOUT_TYPES", "dropout_layers", "mc_dropout_mode", "disagreement_map",
           "mc_dropout_score", "ensemble_disagreement_score"]

MEASURES = ("mutual_information", "variance")

DROPOUT_TYPES = (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d,
                 torch.nn.AlphaDropout, torch.nn.FeatureAlphaDropout)


def dropout_layers(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The network's dropout layers that drop something (``p > 0``)."""
    return [m for m in network.modules() if isinstance(m, DROPOUT_TYPES) and m.p > 0]


@contextlib.contextmanager
def mc_dropout_mode(network: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode except the dropout layers (train mode); every module's mode is restored afterwards."""
    layers = dropout_layers(network)
    if not layers:
        raise ValueError(f"mc_dropout network: {type(network).__name__} has no dropout layer with p > 0")
    with eval_mode(network):
        for m in layers:
            m.train()
        yield network


def disagreement_map(samples: torch.Tensor, measure: str = "mutual_information") -> torch.Tensor:
    """Per-pixel disagreement of ``samples`` ``(T, num_classes, *spatial)`` -> ``(*spatial)``."""
    samples = samples.float()
    if measure == "mutual_information":
        return pixel_entropy(samples.mean(0)) - pixel_entropy(samples, dim=1).mean(0)
    if measure == "variance":
        return samples.var(0, unbiased=False).mean(0)
    raise ValueError(f"measure {measure!r}: expected one of {', '.join(MEASURES)}")


def mc_dropout_score(network: torch.nn.Module, images: Sequence[torch.Tensor], inferer: Inferer | None = None,
                     device: str | torch.device = "cpu", num_samples: int = 8,
                     measure: str = "mutual_information", seed: int = 0) -> float:
    """Negated mean MC-dropout disagreement of ``num_samples`` stochastic passes per image.

    Args:
        network: the candidate; must contain a dropout layer with ``p > 0`` (moved to ``device``).
        images: target images ``(C, *spatial)``.
        inferer: a MONAI inferer (``SimpleInferer`` by default).
        device: where the network runs.
        num_samples: stochastic passes per image (the cost, in forward passes).
        measure: ``"mutual_information"`` or ``"variance"``.
        seed: of the dropout masks.
    """
    images = check_images(images)
    if measure not in MEASURES:
        raise ValueError(f"measure {measure!r}: expected one of {', '.join(MEASURES)}")
    if num_samples < 2:
        raise ValueError(f"num_samples must be at least 2, got {num_samples}")
    network.to(device)
    total, pixels = 0.0, 0
    where = torch.device(device)
    cuda = [where.index if where.index is not None else torch.cuda.current_device()] if where.type == "cuda" else []
    with mc_dropout_mode(network), torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        for x in images:
            samples = torch.stack([predict_one(network, x, inferer, device) for _ in range(num_samples)])
            d = disagreement_map(samples, measure)
            total, pixels = total + float(d.sum()), pixels + d.numel()
    return -total / pixels


def ensemble_disagreement_score(members: Sequence[Predictions | Sequence[torch.Tensor]],
                                measure: str = "mutual_information") -> float:
    """Negated mean disagreement of several models' probabilities on the same images.

    Args:
        members: per model, its :class:`Predictions` or its list of probability tensors ``(num_classes, *spatial)``.
        measure: ``"mutual_information"`` or ``"variance"``.
    """
    probs = [m.require("probabilities", "ensemble_disagreement_score") if isinstance(m, Predictions) else list(m)
             for m in members]
    if len(probs) < 2:
        raise ValueError(f"ensemble_disagreement_score members: need at least 2 models, got {len(probs)}")
    if len({len(p) for p in probs}) > 1:
        raise ValueError("ensemble_disagreement_score members: not the same number of images")
    total, pixels = 0.0, 0
    for i in range(len(probs[0])):
        shapes = {tuple(p[i].shape) for p in probs}
        if len(shapes) > 1:
            raise ValueError(f"ensemble_disagreement_score members: image {i} has shapes {sorted(shapes)}")
        d = disagreement_map(torch.stack([p[i] for p in probs]), measure)
        total, pixels = total + float(d.sum()), pixels + d.numel()
    return -total / pixels


@register_validator("mc_dropout", needs={"network"})
def _mc_dropout(candidate: Candidate, num_samples: int = 8, measure: str = "mutual_information",
                seed: int = 0) -> float:
    return mc_dropout_score(candidate.network, candidate.images, candidate.inferer, candidate.device,
                            num_samples, measure, seed)
