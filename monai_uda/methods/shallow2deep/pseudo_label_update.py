"""Pseudo-label network of shallow-to-deep (Matskevych et al., Section 2.2) as a MONAI ``SupervisedTrainer`` step.

The trainer is a stock :class:`monai.engines.SupervisedTrainer` on target images whose ``iteration_update``
is :class:`PseudoLabelUpdate`: the loss is :class:`~monai_uda.methods.shallow2deep.s2d.Shallow2DeepLoss`
(Eq. 1/5; pseudo-labels = the enhancer's soft predictions under ``pseudo_key``; rectification Eq. 6-8 and
consistency Eq. 3/4 switchable) and, after every optimiser step, the mean teacher follows the student
(Eq. 2, ``alpha = 0.999``).

Deviation (documented, switchable): with ``ema_warmup=True`` the EMA factor is
``min(alpha, 1 - 1 / (step + 1))`` as in Tarvainen & Valpola's reference training, so that on short CPU
budgets the teacher leaves its random initialisation; ``ema_warmup=False`` is Eq. 2 with a fixed alpha.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch import nn

from monai_uda.methods.shallow2deep.s2d import Shallow2DeepLoss, ema_update, make_teacher

__all__ = ["PseudoLabelUpdate"]


class PseudoLabelUpdate:
    """``iteration_update`` of a ``SupervisedTrainer`` that trains from soft pseudo-labels (Sec. 2.2).

    Args:
        network: the student (the trainer's network); the teacher is a frozen copy made here.
        pseudo_key: batch key of the ``(B, 1, *S)`` soft pseudo-labels in ``[0, 1]``.
        alpha: mean-teacher EMA factor (Eq. 2).
        ema_warmup: use ``min(alpha, 1 - 1/(step + 1))`` (see module docstring).

    The trainer's ``loss_function`` must be a :class:`Shallow2DeepLoss`; with ``consistency=False`` the
    teacher is still updated (cheap) but never evaluated. ``teacher`` is exposed for checkpointing.

    Multi-GPU: the trainer's network may be a ``DistributedDataParallel`` wrapper of ``network`` (pass the
    unwrapped student here). The teacher then follows the synchronised student on every rank (identical
    teachers), and after every step the rectification class means ``eta`` of the loss (Eq. 8) are averaged
    over the ranks; Eq. 8 being linear, that is one update with the rank-averaged batch class means, and
    every rank keeps the same ``eta``.
    """

    def __init__(self, network: nn.Module, pseudo_key: str = "pseudo", alpha: float = 0.999, ema_warmup: bool = True):
        self.teacher = make_teacher(network)
        self.pseudo_key = pseudo_key
        self.alpha = float(alpha)
        self.ema_warmup = bool(ema_warmup)
        self.step = 0

    def current_alpha(self) -> float:
        return min(self.alpha, 1.0 - 1.0 / (self.step + 1)) if self.ema_warmup else self.alpha

    def __call__(self, engine, batchdata: dict[str, Any]) -> dict:
        loss_fn = engine.loss_function
        if not isinstance(loss_fn, Shallow2DeepLoss):
            raise TypeError(f"the trainer's loss_function must be a Shallow2DeepLoss, got {type(loss_fn).__name__}.")
        if self.pseudo_key not in batchdata:
            raise KeyError(f"batch has no pseudo-label key {self.pseudo_key!r} (keys: {sorted(batchdata)}).")
        x = batchdata[Keys.IMAGE].to(engine.state.device, non_blocking=engine.non_blocking)
        y = batchdata[self.pseudo_key].to(engine.state.device, non_blocking=engine.non_blocking)
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        y = y.as_tensor() if hasattr(y, "as_tensor") else y
        self.teacher.to(x.device)
        engine.state.output = {Keys.IMAGE: x, Keys.LABEL: y}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)

        def _compute():
            pred = engine.inferer(x, engine.network)
            teacher_pred = None
            if loss_fn.consistency:
                with torch.no_grad():
                    self.teacher.eval()
                    teacher_pred = engine.inferer(x, self.teacher)
            engine.state.output[Keys.PRED] = pred
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.state.output[Keys.LOSS] = loss_fn(pred, y, teacher_pred)
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                _compute()
            engine.scaler.scale(engine.state.output[Keys.LOSS]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            _compute()
            engine.state.output[Keys.LOSS].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        student = engine.network
        if isinstance(student, torch.nn.parallel.DistributedDataParallel):
            student = student.module
            if loss_fn.rectification:  # the same decision on every rank: always one collective
                from monai_uda.distributed import all_reduce

                eta = loss_fn.eta.detach().double()
                known = ~torch.isnan(eta)
                total = all_reduce(torch.cat([torch.where(known, eta, torch.zeros_like(eta)), known.double()]))
                n = total[2:]
                mean = torch.where(n > 0, total[:2] / n.clamp_min(1), torch.full_like(n, float("nan")))
                loss_fn.eta.copy_(mean.to(loss_fn.eta))
        ema_update(self.teacher, student, self.current_alpha())  # Eq. 2
        self.step += 1
        return engine.state.output
