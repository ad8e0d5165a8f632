"""The validators' common input: one inference pass per candidate, kept as softmax probabilities.

:func:`predict_probabilities` runs a network once over a list of target images (channel-first tensors,
``(C, *spatial)``, as MONAI's transforms give them) and returns one ``(num_classes, *spatial)`` softmax
tensor per image, float16 on the CPU by default (2 bytes per class and pixel). :class:`Predictions`
holds them, optionally with the source model's probabilities on the same images and the other
candidates' argmax maps, so that every validator that needs no extra forward pass reads the same arrays.
:class:`Candidate` is what a registered validator receives.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from monai.inferers import Inferer, SimpleInferer

__all__ = ["Predictions", "Candidate", "predict_probabilities", "predict_one", "plain_argmax", "eval_mode",
           "check_images"]


@contextlib.contextmanager
def eval_mode(network: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``network`` in eval mode and restore every module's own ``training`` flag afterwards."""
    flags = [(m, m.training) for m in network.modules()]
    network.eval()
    try:
        yield network
    finally:
        for m, training in flags:
            m.training = training


def check_images(images: Sequence[Any]) -> list[torch.Tensor]:
    """``images`` as a list of float tensors ``(C, *spatial)``; a one-line ValueError naming the bad one."""
    if isinstance(images, torch.Tensor) or not isinstance(images, Sequence) or len(images) == 0:
        raise ValueError("images must be a non-empty list of (C, *spatial) tensors")
    out = []
    for i, image in enumerate(images):
        t = torch.as_tensor(image)
        if t.ndim < 3:
            raise ValueError(f"images[{i}] must be (C, *spatial) with 2 or 3 spatial axes, got shape {tuple(t.shape)}")
        out.append(t)
    return out


def predict_one(network: torch.nn.Module, image: torch.Tensor, inferer: Inferer | None = None,
                device: str | torch.device = "cpu") -> torch.Tensor:
    """Softmax probabilities ``(num_classes, *spatial)`` (float32, CPU) of one image ``(C, *spatial)``.

    No gradient; the caller sets the network's mode. A network returning a tuple or list (e.g. logits and
    a variance map) is read from its first output.
    """
    x = torch.as_tensor(image).unsqueeze(0).to(device=device, dtype=torch.float32)
    with torch.no_grad():
        out = (inferer or SimpleInferer())(x, network)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return torch.softmax(torch.as_tensor(out).float(), dim=1)[0].cpu()


def plain_argmax(network: torch.nn.Module, images: Sequence[torch.Tensor], inferer: Inferer | None,
                 device: str | torch.device, predictions: "Predictions | None", name: str) -> tuple[int, list]:
    """``(num_classes, argmax maps)`` of the unaugmented images: from ``predictions`` when given (one per image,
    else a ValueError naming ``name``), otherwise one :func:`predict_one` pass (the caller sets the mode)."""
    if predictions is None:
        plain = [predict_one(network, x, inferer, device) for x in images]
        return plain[0].shape[0], [p.argmax(0) for p in plain]
    if len(predictions) != len(images):
        raise ValueError(f"{name} predictions: {len(predictions)} for {len(images)} images")
    return predictions.num_classes, predictions.argmax


def predict_probabilities(network: torch.nn.Module, images: Sequence[torch.Tensor], inferer: Inferer | None = None,
                          device: str | torch.device = "cpu", dtype: torch.dtype = torch.float16) -> list[torch.Tensor]:
    """One plain inference pass: the softmax probabilities of ``network`` on each image.

    Args:
        network: a segmentation network returning logits ``(B, num_classes, *spatial)``; moved to ``device``
            and run in eval mode (its modules' modes are restored afterwards), without gradients.
        images: channel-first tensors ``(C, *spatial)``, one image each (no batch axis).
        inferer: a MONAI inferer (``SlidingWindowInferer`` for large images); ``SimpleInferer`` by default.
        device: where the network runs.
        dtype: of the returned tensors (float16 halves the memory of float32).

    Returns:
        One CPU tensor ``(num_classes, *spatial)`` per image.
    """
    images = check_images(images)
    network.to(device)
    with eval_mode(network):
        return [predict_one(network, image, inferer, device).to(dtype) for image in images]


@dataclass
class Predictions:
    """A candidate's predictions on the target images, and what some validators compare them with.

    Attributes:
        probabilities: per image, softmax probabilities ``(num_classes, *spatial)`` (class axis first).
        source_probabilities: the source model's probabilities on the same images (optional).
        others_argmax: the other candidates' argmax maps, ``others_argmax[k][i]`` = candidate ``k``,
            image ``i``, ``(*spatial)`` (optional).
        argmax: per image, the argmax map ``(*spatial)`` (uint8); computed from ``probabilities`` when omitted.
        num_classes: taken from ``probabilities``; required when only ``argmax`` is given.
    """

    probabilities: list[torch.Tensor] | None = None
    source_probabilities: list[torch.Tensor] | None = None
    others_argmax: list[list[torch.Tensor]] | None = None
    argmax: list[torch.Tensor] | None = None
    num_classes: int | None = None
    _source_argmax: list[torch.Tensor] | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.probabilities is not None:
            self.probabilities = [torch.as_tensor(p) for p in self.probabilities]
            if not self.probabilities or any(p.ndim < 3 for p in self.probabilities):
                raise ValueError("Predictions probabilities: a non-empty list of (num_classes, *spatial) tensors")
            classes = {p.shape[0] for p in self.probabilities}
            if len(classes) > 1 or (self.num_classes is not None and classes != {self.num_classes}):
                raise ValueError(f"Predictions num_classes: the probabilities have {sorted(classes)} classes")
            self.num_classes = classes.pop()
            if self.argmax is None:
                self.argmax = [_argmax(p) for p in self.probabilities]
        if self.argmax is None or self.num_classes is None:
            raise ValueError("Predictions needs probabilities, or argmax maps and num_classes")
        shapes = [tuple(a.shape) for a in self.argmax]
        if self.probabilities is not None and shapes != [tuple(p.shape[1:]) for p in self.probabilities]:
            raise ValueError("Predictions argmax: its shapes differ from the probabilities' spatial shapes")
        if self.source_probabilities is not None:
            self.source_probabilities = [torch.as_tensor(p) for p in self.source_probabilities]
            if [tuple(p.shape) for p in self.source_probabilities] != [(self.num_classes, *s) for s in shapes]:
                raise ValueError("Predictions source_probabilities: not the candidate's images, classes or shapes")
        for k, maps in enumerate(self.others_argmax or []):
            if [tuple(m.shape) for m in maps] != shapes:
                raise ValueError(f"Predictions others_argmax[{k}]: not one map per image of the candidate's shapes")

    def __len__(self) -> int:
        return len(self.argmax)

    @property
    def source_argmax(self) -> list[torch.Tensor] | None:
        """The source model's argmax maps (None without ``source_probabilities``)."""
        if self._source_argmax is None and self.source_probabilities is not None:
            self._source_argmax = [_argmax(p) for p in self.source_probabilities]
        return self._source_argmax

    def require(self, name: str, validator: str) -> Any:
        """``getattr(self, name)``, or a one-line ValueError saying that ``validator`` needs it."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{validator} needs Predictions.{name}")
        return value


@dataclass
class Candidate:
    """What a registered validator receives: one candidate model and its predictions.

    ``network``, ``images``, ``inferer`` and ``device`` are set for validators that declared
    ``needs={"network"}``; ``source_network`` and ``source_statistics`` when available.
    """

    name: str
    predictions: Predictions
    network: torch.nn.Module | None = None
    images: Sequence[torch.Tensor] | None = None
    inferer: Inferer | None = None
    device: str | torch.device = "cpu"
    source_network: torch.nn.Module | None = None
    source_statistics: Any = None


def _argmax(p: torch.Tensor) -> torch.Tensor:
    a = p.argmax(0)
    return a.to(torch.uint8) if p.shape[0] <= 256 else a
