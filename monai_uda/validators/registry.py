"""The validator registry: name -> callable scoring one candidate.

A registered validator is called as ``validator(candidate, **options)`` with a
:class:`~monai_uda.validators.predictions.Candidate` and returns one float, **higher = predicted better**.
``needs`` says what it reads besides the candidate's own predictions, so that the scorer can check its
inputs and order the work:

- ``"network"``: the candidate's network, images, inferer and device (it runs extra forward passes);
- ``"source"``: the source model's probabilities on the same images (``predictions.source_probabilities``)
  or the source network (``candidate.source_network``);
- ``"others"``: every other candidate's argmax maps (``predictions.others_argmax``); such validators run
  after every candidate has been predicted, and get argmax maps only (``predictions.probabilities`` is None);
- ``"source_statistics"``: statistics of the *source* labels (``candidate.source_statistics``);
- ``"image_pairs"``: mixes two target images, so it needs at least two.

This module imports nothing of the package, so a method package can register its own validators
(``@register_validator("w2_shift", needs={"network"})``) without a cycle.
"""

from __future__ import annotations

from typing import Callable, Iterable

__all__ = ["VALIDATORS", "NEEDS", "register_validator", "get_validator", "validator_needs"]

#: name -> validator callable
VALIDATORS: dict[str, Callable[..., float]] = {}

#: what a validator may declare in ``needs``
NEEDS = frozenset({"network", "source", "others", "source_statistics", "image_pairs"})


def register_validator(name: str, needs: Iterable[str] = ()) -> Callable:
    """Decorator: register ``fn(candidate, **options) -> float`` under ``name``.

    Args:
        name: the validator's name (a column of :func:`~monai_uda.validators.score.score_candidates`).
        needs: a subset of :data:`NEEDS`.

    Raises:
        ValueError: an unknown ``needs`` entry, or ``name`` already taken by another function.
    """
    needs = frozenset(needs)
    if needs - NEEDS:
        raise ValueError(f"register_validator needs: unknown {sorted(needs - NEEDS)}; known: {sorted(NEEDS)}")

    def decorate(fn: Callable) -> Callable:
        old = VALIDATORS.get(name)
        if old is not None and _qualified(old) != _qualified(fn):  # a module reload may register the same again
            raise ValueError(f"validator {name!r} is already registered by {_qualified(old)}")
        fn.needs = needs
        VALIDATORS[name] = fn
        return fn

    return decorate


def get_validator(name: str) -> Callable[..., float]:
    """The validator registered as ``name``; a one-line ValueError naming the known ones otherwise."""
    try:
        return VALIDATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown validator {name!r}; known: {', '.join(sorted(VALIDATORS))}") from None


def validator_needs(name: str) -> frozenset[str]:
    """What the validator ``name`` declared in ``needs``."""
    return getattr(get_validator(name), "needs", frozenset())


def _qualified(fn: Callable) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
