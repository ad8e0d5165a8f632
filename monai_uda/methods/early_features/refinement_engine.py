"""Stage 3 of Sheikh & Schultz (MIDL 2022) as a MONAI ``SupervisedTrainer``: early-layer refinement.

The trainer is a stock :class:`monai.engines.SupervisedTrainer` whose ``iteration_update`` is
:class:`EarlyRefinementUpdate` (unlabelled target batches, no label key), whose optimiser only holds the
shared early-layer parameters, whose loss is Eq. 2
(:class:`~monai_uda.methods.early_features.refinement.EarlyRefinementLoss`), and which stops with
:class:`~monai_uda.methods.early_features.agreement_early_stop.AgreementEarlyStop`.

Modes (Sec. 3.1.3-3.1.4): refine on the whole target set (:func:`create_early_refinement_trainer`), or
one-shot — a fresh copy per subject, refined on that subject alone and then used to predict it
(:func:`one_shot_refinement`). The refined model (``segmentor.inference = True``) can then be applied
unchanged to unseen target data (Table 3).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.transforms import Compose, RandSpatialCrop, SpatialPad
from monai.utils import CommonKeys as Keys
from tqdm import tqdm

from monai_uda.methods.early_features.refinement import (
    EarlyRefinementLoss,
    normalize_bn_mode,
    set_refinement_mode,
    split_outputs,
)
from monai_uda.methods.early_features.agreement_early_stop import AgreementEarlyStop
from monai_uda.methods.early_features.early_head import EarlyFeaturesSegmentor, freeze_for_refinement
from monai_uda.utils import atomic_json

__all__ = [
    "EARLY_KEY",
    "EarlyRefinementUpdate",
    "OneShotRefinementInferer",
    "create_early_refinement_trainer",
    "one_shot_refinement",
    "refinement_summary",
    "write_refinement_summary",
]

logger = logging.getLogger(__name__)

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
        reestimate_bn: see :mod:`monai_uda.methods.early_features.refinement`; default ``"all"``.
        image_key: image key of dict batches.

    Returns (per call):
        ``{IMAGE: x, PRED: final_logits, "early_pred": early logits (tensor, or tuple for several
        heads), LOSS: loss}``.
    """

    def __init__(self, reestimate_bn: bool | str = "all", image_key: str = Keys.IMAGE):
        self.reestimate_bn = normalize_bn_mode(reestimate_bn)
        self.image_key = image_key

    def __call__(self, engine: SupervisedTrainer, batchdata: Any) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        net = engine.network  # may be a DistributedDataParallel wrapper (multi-GPU): forward through it
        seg = net.module if isinstance(net, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)) else net
        if not isinstance(seg, EarlyFeaturesSegmentor):
            raise TypeError(f"the trainer's network must be an EarlyFeaturesSegmentor, got {type(seg).__name__}.")
        if seg.inference:
            raise ValueError("the EarlyFeaturesSegmentor is in inference mode; set `inference=False` to refine it.")
        x = _batch_image(batchdata, self.image_key).to(engine.state.device, non_blocking=engine.non_blocking)
        set_refinement_mode(seg, self.reestimate_bn)
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
    reestimate_bn: bool | str = "all",
    min_delta: float = 0.005,
    agreement_loader: Iterable | None = None,
    agreement_inferer: Inferer | Callable | None = None,
    optimizer: Callable[[list], torch.optim.Optimizer] | None = None,
    include_lower: bool = True,
    image_key: str = Keys.IMAGE,
    train_handlers: Sequence | None = None,
    restore_on_divergence: bool = False,
    divergence_delta: float = 0.02,
    **trainer_kwargs: Any,
) -> SupervisedTrainer:
    """A ``SupervisedTrainer`` that refines the early layers of ``segmentor`` on unlabelled target data.

    Args:
        segmentor: source-trained network with a trained early head (stage 2); modified in place.
        train_loader: target batches (dicts with ``image_key`` or tensors); labels are never read.
        max_epochs: hard cap on epochs (the paper needed at most five).
        lr: Adam learning rate (the paper's 0.001).
        device: device to run on.
        detach_pseudo_label, reestimate_bn: see :mod:`monai_uda.methods.early_features.refinement`.
        min_delta: stopping threshold on the change of agreement (paper: 0.005).
        agreement_loader: target data for the per-epoch agreement; defaults to ``train_loader``.
        agreement_inferer: inferer for the agreement pass (e.g. sliding window for 3D volumes).
        optimizer: factory ``params -> Optimizer`` (default ``torch.optim.Adam(params, lr)``).
        include_lower: refine every stage up to the deepest head (see ``early_module_names``).
        image_key: image key of dict batches.
        train_handlers: extra handlers (the stop handler is added last).
        restore_on_divergence: the divergence guard of
            :class:`~monai_uda.methods.early_features.agreement_early_stop.AgreementEarlyStop` (off by default: not in the
            paper, and it would have rejected measured gains; the paper's rule is the agreement change < ``min_delta``): the
            agreement before refinement is measured too, and when it later falls more than
            ``divergence_delta`` below its best, the best epoch's weights are restored and refinement stops.
        divergence_delta: see ``restore_on_divergence``.
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
        compare_with_initial=restore_on_divergence,
        restore_on_divergence=restore_on_divergence,
        divergence_delta=divergence_delta,
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


class OneShotRefinementInferer(Inferer):
    """One-shot mode (Table 2) as a MONAI inferer: every input is refined on alone, then predicted.

    Used as the ``inferer`` of a ``SupervisedEvaluator`` whose network is the stage-2
    :class:`EarlyFeaturesSegmentor`: for each item of the batch (one volume in 3D, one image in 2D) a
    fresh copy of the segmentor is refined on that item only (Eq. 2 with the agreement stopping rule,
    :func:`create_early_refinement_trainer`) and the copy, in inference mode, predicts the item. The
    evaluator's own network is never modified, so every subject starts from the same source model.
    The evaluator runs inferers under ``torch.no_grad()``; refinement re-enables gradients locally.

    Args:
        roi_size: refine on random crops of this size (padded first) and predict with a sliding window
            of it; ``None`` refines on and predicts the whole input.
        num_samples: random crops per refinement epoch (``roi_size`` only).
        batch_size: crops per iteration (default: all ``num_samples`` in one batch).
        max_epochs: cap on refinement epochs.
        lr: Adam learning rate (paper: 0.001).
        min_delta: stopping threshold on the change of the early/final agreement (paper: 0.005).
        detach_pseudo_label, reestimate_bn: see :mod:`monai_uda.methods.early_features.refinement`.
        sw_batch_size, overlap: sliding-window settings (``roi_size`` only).
        progress: show a progress bar over the items.
        restore_on_divergence, divergence_delta: the divergence guard (see
            :func:`create_early_refinement_trainer`).

    Attributes:
        history: one dict per refined item: ``epochs_to_convergence``, ``agreement_converged``,
            ``agreement_history``.
    """

    def __init__(
        self,
        roi_size: Sequence[int] | None = None,
        num_samples: int = 4,
        batch_size: int | None = None,
        max_epochs: int = 10,
        lr: float = 1e-3,
        min_delta: float = 0.005,
        detach_pseudo_label: bool = True,
        reestimate_bn: bool | str = "all",
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        progress: bool = True,
        restore_on_divergence: bool = False,
        divergence_delta: float = 0.02,
    ):
        super().__init__()
        if num_samples < 1:
            raise ValueError(f"`num_samples` must be >= 1, got {num_samples}.")
        if max_epochs < 1:
            raise ValueError(f"`max_epochs` must be >= 1, got {max_epochs}.")
        self.roi_size = None if roi_size is None else [int(r) for r in roi_size]
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size or num_samples)
        self.max_epochs = int(max_epochs)
        self.lr = float(lr)
        self.min_delta = float(min_delta)
        self.detach_pseudo_label = bool(detach_pseudo_label)
        self.reestimate_bn = normalize_bn_mode(reestimate_bn)
        self.window = (
            SimpleInferer()
            if self.roi_size is None
            else SlidingWindowInferer(self.roi_size, sw_batch_size=sw_batch_size, overlap=overlap)
        )
        self.progress = progress
        self.restore_on_divergence = bool(restore_on_divergence)
        self.divergence_delta = float(divergence_delta)
        self.history: list[dict[str, Any]] = []

    def _train_loader(self, x: torch.Tensor) -> Iterable:
        if self.roi_size is None:
            return [x]
        if len(self.roi_size) != x.ndim - 2:
            raise ValueError(f"`roi_size` {self.roi_size} does not match the {x.ndim - 2}D input {tuple(x.shape)}.")
        crop = Compose([SpatialPad(self.roi_size), RandSpatialCrop(self.roi_size, random_size=False)])
        ds = Dataset([x[0]] * self.num_samples, transform=crop)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=0)

    def refine_one(self, x: torch.Tensor, network: EarlyFeaturesSegmentor) -> tuple[torch.Tensor, dict[str, Any]]:
        """Refine a copy of ``network`` on the single input ``x`` (1, C, *spatial); return its final logits."""
        model = copy.deepcopy(network)
        x_plain = x.as_tensor() if hasattr(x, "as_tensor") else x
        x_plain = x_plain.detach()
        with torch.enable_grad():
            trainer = create_early_refinement_trainer(
                model,
                self._train_loader(x_plain),
                max_epochs=self.max_epochs,
                lr=self.lr,
                device=x.device,
                detach_pseudo_label=self.detach_pseudo_label,
                reestimate_bn=self.reestimate_bn,
                min_delta=self.min_delta,
                agreement_loader=[x_plain],
                agreement_inferer=self.window,
                restore_on_divergence=self.restore_on_divergence,
                divergence_delta=self.divergence_delta,
            )
            trainer.run()
        info = refinement_summary(trainer)
        model.inference = True
        model.requires_grad_(False)
        model.eval()
        with torch.no_grad():
            return self.window(x, model), info

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not isinstance(network, EarlyFeaturesSegmentor):
            raise TypeError(
                "OneShotRefinementInferer needs the stage-2 EarlyFeaturesSegmentor as network, "
                f"got {type(network).__name__}."
            )
        outs = []
        for i in tqdm(range(inputs.shape[0]), desc="one-shot refinement", leave=False, disable=not self.progress):
            pred, info = self.refine_one(inputs[i : i + 1], network)
            self.history.append(info)
            outs.append(pred)
        return torch.cat(outs) if len(outs) > 1 else outs[0]


def refinement_summary(trainer: SupervisedTrainer) -> dict[str, Any]:
    """The outcome of a refinement run: epochs to convergence, whether the stopping rule fired, agreements."""
    state = trainer.state
    epochs = getattr(state, "epochs_to_convergence", None)
    return {
        "epochs_to_convergence": int(epochs if epochs is not None else state.epoch),
        "agreement_converged": bool(getattr(state, "agreement_converged", False)),
        "agreement_diverged": bool(getattr(state, "agreement_diverged", False)),
        "restored_epoch": getattr(state, "restored_epoch", None),
        "agreement_history": [float(v) for v in getattr(state, "agreement_history", [])],
        "iterations": int(state.iteration),
    }


def write_refinement_summary(
    source: SupervisedTrainer | OneShotRefinementInferer, path: str, extra: Mapping[str, Any] | None = None
) -> str:
    """Write the refinement outcome as JSON (atomically) and return ``path``.

    ``source`` is the refinement trainer (whole-target mode; :func:`refinement_summary`) or the
    :class:`OneShotRefinementInferer` of a one-shot run (its per-item ``history`` and the mean and
    maximum epochs to convergence).
    """
    if isinstance(source, OneShotRefinementInferer):
        epochs = [h["epochs_to_convergence"] for h in source.history]
        out: dict[str, Any] = {
            "mode": "one-shot",
            "items": len(epochs),
            "mean_epochs_to_convergence": float(sum(epochs) / len(epochs)) if epochs else float("nan"),
            "max_epochs_to_convergence": max(epochs) if epochs else 0,
            "per_item": source.history,
        }
    else:
        out = {"mode": "target-set", **refinement_summary(source)}
    out.update(dict(extra or {}))
    logger.info("refinement summary: %s", {k: v for k, v in out.items() if k != "per_item"})
    return atomic_json(out, path)
