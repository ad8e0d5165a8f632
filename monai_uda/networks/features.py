"""Read intermediate feature maps of a network with forward hooks, without changing the network."""

from __future__ import annotations

from typing import Iterable

import torch

__all__ = ["FeatureRecorder"]


class FeatureRecorder:
    """Record the outputs (or inputs) of named sub-modules during a forward pass.

    Example::

        with FeatureRecorder(net, ["conv_0", "down_1"]) as rec:
            logits = net(x)
        early = rec.features["conv_0"]

    Args:
        network: any ``torch.nn.Module``.
        names: dotted sub-module names as in ``network.named_modules()``.
        record_input: record the module's first input instead of its output (e.g. the
            decoder features that enter ``final_conv``).
        detach: detach recorded tensors from the graph.
    """

    def __init__(self, network: torch.nn.Module, names: Iterable[str], record_input: bool = False, detach: bool = False):
        self.network = network
        self.names = list(names)
        self.record_input = record_input
        self.detach = detach
        self.features: dict[str, torch.Tensor] = {}
        self._handles: list = []
        modules = dict(network.named_modules())
        missing = [n for n in self.names if n not in modules]
        if missing:
            raise KeyError(f"{type(network).__name__} has no sub-module(s) {missing}; available: {list(modules)[:20]}...")
        self._modules = [modules[n] for n in self.names]

    def _hook(self, name: str):
        def fn(module, inputs, output=None):
            t = inputs[0] if self.record_input else output
            self.features[name] = t.detach() if self.detach else t

        return fn

    def attach(self) -> "FeatureRecorder":
        for name, m in zip(self.names, self._modules):
            if self.record_input:
                self._handles.append(m.register_forward_pre_hook(self._hook(name)))
            else:
                self._handles.append(m.register_forward_hook(self._hook(name)))
        return self

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureRecorder":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()
