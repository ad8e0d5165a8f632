"""Stage 3 of Sheikh & Schultz (MIDL 2022) as a MONAI ``SupervisedTrainer``: early-layer refinement.

The trainer is a stock :class:`monai.engines.SupervisedTrainer` whose ``iteration_update`` is
:class:`EarlyRefinementUpdate` (unlabelled target batches, no label key), whose optimiser only holds the
shared early-layer parameters, whose loss is Eq. 2
(:class:`~monai_uda.adaptation.early_refinement.EarlyRefinementLoss`), and which stops with
:class:`~monai_uda.handlers.agreement_early_stop.AgreementEarlyStop`.

Modes (Sec. 3.1.3-3.1.4): refine on the whole target set (:func:`create_early_refinement_trainer`), or
one-shot — a fresh copy per subject, refined on that subject alone and then used to predict it
(:func:`one_shot_refinement`). The refined model (``segmentor.inference = True``) can then be applied
unchanged to unseen target data (Table 3).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer
from monai.utils import CommonKeys as Keys
from tqdm import tqdm

from monai_uda.adaptation.early_refinement import (
    EarlyRefinementLoss,
    normalize_bn_mode,
    set_refinement_mode,
    split_outputs,
)
from monai_uda.handlers.agreement_early_stop import AgreementEarlyStop
from monai_uda.networks.early_head import EarlyFeaturesSegmentor, freeze_for_refinement

__all__ = ["EarlyRefinementUpdate", "create_early_refinement_trainer", "one_shot_refinement", "EARLY_KEY"]

#: key of the early logits in the iteration output (``Keys.PRED`` holds the final logits)
EARLY_KEY = "early_pred"


def _batch_image(batchdata: Any, image_key: str) -> torch.Tensor:
    if isinstance(batchdata, torch.Tensor):
        return batchdata
    if isinstance(batchdata, dict):
        if image_key not in batchdata:
            raise KeyError(f"target batch has no image key {image_key!r}; keys: {list(batchdata)}.")
        return batchdata[image_key]
    if isinstance(batchdata, (list, tuple)) and batchdata and isinstance(batchdata[0], torch.Tensor):
        return batchdata[0]
    raise TypeError(
        f"unsupported batch type {type(batchdata).__name__}; expected a tensor or a dict with {image_key!r}."
    )


class EarlyRefinementUpdate:
    """``iteration_update`` for a MONAI ``SupervisedTrainer``: one Eq. 2 step on an unlabelled target batch.

    Per iteration: set the refinement train/eval state (``reestimate_bn``), forward the segmentor,
    ``loss = engine.loss_function(final_logits, early_logits)``, back-propagate and step the optimiser
    (which must hold only the early parameters). Any label in the batch is ignored. MONAI's iteration
    events (``FORWARD_COMPLETED`` ... ``MODEL_COMPLETED``) are fired as in ``SupervisedTrainer``.

    Args:
        reestimate_bn: see :mod:`monai_uda.adaptation.early_refinement`; default ``"early"``.
        image_key: image key of dict batches.

    Returns (per call):
        ``{IMAGE: x, PRED: final_logits, "early_pred": early logits (tensor, or tuple for several
        heads), LOSS: loss}``.
    """

    def __init__(self, reestimate_bn: bool | str = "early", image_key: str = Keys.IMAGE):
        self.reestimate_bn = normalize_bn_mode(reestimate_bn)
        self.image_key = image_key

    def __call__(self, engine: SupervisedTrainer, batchdata: Any) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        net = engine.network
        if not isinstance(net, EarlyFeaturesSegmentor):
            raise TypeError(f"the trainer's network must be an EarlyFeaturesSegmentor, got {type(net).__name__}.")
        if net.inference:
            raise ValueError("the EarlyFeaturesSegmentor is in inference mode; set `inference=False` to refine it.")
        x = _batch_image(batchdata, self.image_key).to(engine.state.device, non_blocking=engine.non_blocking)
        set_refinement_mode(net, self.reestimate_bn)
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        final, early = split_outputs(engine.inferer(x, net))
        engine.state.output = {Keys.IMAGE: x, Keys.PRED: final, EARLY_KEY: early[0] if len(early) == 1 else early}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = engine.loss_function(final, early)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        loss.backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output


def create_early_refinement_trainer(
    segmentor: EarlyFeaturesSegmentor,
    train_loader: Iterable,
    max_epochs: int = 10,
    lr: float = 1e-3,
    device: str | torch.device = "cpu",
    detach_pseudo_label: bool = True,
    reestimate_bn: bool | str = "early",
    min_delta: float = 0.005,
    agreement_loader: Iterable | None = None,
    agreement_inferer: Inferer | Callable | None = None,
    optimizer: Callable[[list], torch.optim.Optimizer] | None = None,
    include_lower: bool = True,
    image_key: str = Keys.IMAGE,
    train_handlers: Sequence | None = None,
    **trainer_kwargs: Any,
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` that refines the early layers of ``segmentor`` on unlabelled target data.

    Args:
        segmentor: source-trained network with a trained early head (stage 2); modified in place.
        train_loader: target batches (dicts with ``image_key`` or tensors); labels are never read.
        max_epochs: hard cap on epochs (the paper needed at most five).
        lr: Adam learning rate (the paper's 0.001).
        device: device to run on.
        detach_pseudo_label, reestimate_bn: see :mod:`monai_uda.adaptation.early_refinement`.
        min_delta: stopping threshold on the change of agreement (paper: 0.005).
        agreement_loader: target data for the per-epoch agreement; defaults to ``train_loader``.
        agreement_inferer: inferer for the agreement pass (e.g. sliding window for 3D volumes).
        optimizer: factory ``params -> Optimizer`` (default ``torch.optim.Adam(params, lr)``).
        include_lower: refine every stage up to the deepest head (see ``early_module_names``).
        image_key: image key of dict batches.
        train_handlers: extra handlers (the stop handler is added last).
        trainer_kwargs: passed to ``SupervisedTrainer`` (e.g. ``inferer``, ``epoch_length``).

    Returns:
        the trainer; after ``trainer.run()``, ``trainer.state.epochs_to_convergence`` and
        ``trainer.state.agreement_history`` hold the outcome.
    """
    if not isinstance(segmentor, EarlyFeaturesSegmentor):
        raise TypeError(f"`segmentor` must be an EarlyFeaturesSegmentor, got {type(segmentor).__name__}.")
    segmentor.inference = False
    segmentor.to(device)
    params = freeze_for_refinement(segmentor, include_lower=include_lower)
    opt = optimizer(params) if optimizer is not None else torch.optim.Adam(params, lr=lr)
    stop = AgreementEarlyStop(
        data_loader=train_loader if agreement_loader is None else agreement_loader,
        min_delta=min_delta,
        inferer=agreement_inferer,
        image_key=image_key,
    )
    handlers = list(train_handlers or []) + [stop]
    return SupervisedTrainer(
        device=device,
        max_epochs=max_epochs,
        train_data_loader=train_loader,
        network=segmentor,
        optimizer=opt,
        loss_function=EarlyRefinementLoss(detach_pseudo_label),
        iteration_update=EarlyRefinementUpdate(reestimate_bn=reestimate_bn, image_key=image_key),
        train_handlers=handlers,
        **trainer_kwargs,
    )


def one_shot_refinement(
    segmentor: EarlyFeaturesSegmentor,
    subject_loader: Iterable,
    inferer: Inferer | Callable | None = None,
    device: str | torch.device = "cpu",
    image_key: str = Keys.IMAGE,
    **trainer_kwargs: Any,
) -> tuple[list[torch.Tensor], EarlyFeaturesSegmentor, int]:
    """One-shot mode (Table 2): refine a fresh copy of ``segmentor`` on one subject, then predict it.

    ``segmentor`` itself is left untouched. ``subject_loader`` yields the batches of a single subject
    (one 3D volume, or the 2D slices of one volume); it is used both for refinement and for prediction.

    Args:
        segmentor: the stage-2 model (base + trained head).
        subject_loader: the subject's batches.
        inferer: inferer for the prediction (default ``SimpleInferer``), called on the copy in inference
            mode, so it returns final logits only.
        device: device to run on.
        image_key: image key of dict batches.
        trainer_kwargs: passed to :func:`create_early_refinement_trainer`.

    Returns:
        ``(final_logits per batch (on CPU), the adapted copy in inference mode, epochs_to_convergence)``.
    """
    model = copy.deepcopy(segmentor)
    trainer = create_early_refinement_trainer(
        model, subject_loader, device=device, image_key=image_key, **trainer_kwargs
    )
    trainer.run()
    model.inference = True
    model.requires_grad_(False)
    model.eval()
    inferer = SimpleInferer() if inferer is None else inferer
    preds = []
    with torch.no_grad():
        for batch in tqdm(subject_loader, desc="one-shot predict", leave=False):
            x = _batch_image(batch, image_key).to(device)
            preds.append(inferer(x, model).cpu())
    return preds, model, int(trainer.state.epochs_to_convergence)
