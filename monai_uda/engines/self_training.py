"""The self-training engine: pseudo-label rounds, the round trainer and the default prediction.

Pseudo-label self-training (a model labels the unlabelled target images; it is trained on these labels and
labels again) is one engine here, configured by objects, as torch-em's self-training trainers take a
pseudo-labeller object and nnU-Net has one trainer with overridable hooks. Round 0 labels the target with
the starting (source) model; each round ``r = 1..T`` trains on the pseudo-labels of round ``r - 1`` and
relabels the target with the new model (Li et al., BUDA-Seg, Sec. 3: "we use the current predictions of BB
as the new pseudo labels for the next training iteration. We repeat a total of T iterations").

- :class:`SelfTraining`: the engine a bundle config runs (``"$@self_training.run()"``): network, target
  items, pseudo-labeller, predictor and round trainer in, adapted model, rounds and a summary JSON out.
- :class:`RoundTrainer`: the one round trainer (``train_fn``): from config-level objects (optimizer factory,
  loss, inferer, trainer class such as MONAI ``SupervisedTrainer`` or BUDA-Seg's
  ``VarianceSupervisedTrainer``, train transforms, batch size, epochs per round, ``epoch_length``, AMP,
  DDP) it builds and runs a MONAI trainer per round on the pseudo-labelled items.
- :class:`SlidingWindowPredictor`: the default prediction (``predict_fn``): softmax of a sliding-window
  inference in each item's own array space (MONAI ``Invertd`` undoes orientation/resampling in 3D).
  :class:`ImageWindowInferer` is a sliding window fitted to each image (few large windows).
- Pseudo-labellers (``select_fn``): :mod:`monai_uda.engines.pseudo_labellers` (the contract, argmax, ST,
  CBST); PAST's top-q (:mod:`monai_uda.methods.past.top_q`) and MC-dropout rectification
  (:mod:`monai_uda.methods.buda.mc_dropout`) live with their methods.
- :class:`PseudoLabelRounds`: the resumable round driver all of the above plug into.
- :func:`split_epochs`: a training budget spread over the rounds.

Which method is which configuration (bundle configs): BUDA-Seg and its ``selftrain``/``mcdropout`` baselines
(``variance_sampling_segmentation/configs/adapt*.json``), PAST's top-q rounds
(``pixel_alignment_segmentation/configs/self_train.json``), ST and CBST of Zou et al.
(``early_feature_refinement_segmentation/configs/adapt_st.json``, ``adapt_cbst.json``).

On disk, under ``output_dir``::

    round_<r>/<name>.nii.gz          pseudo-label of each target item (uint8; 255 = ignored pixel)
    round_<r>/<name>_weight.nii.gz   optional float32 per-pixel weight (when the labeller returns one)
    round_<r>/model.pt               model state_dict after round r (round 0: the source model)
    round_<r>/train_state.pt         the round trainer's state carried into the next round (an optimizer instance
                                     shared by the rounds: its moments), when it has one
    rounds_state.json                completed rounds, their files, foreground fraction, collapse flag

Every file is written atomically (temporary file + ``os.replace``) and the state file is updated only
after a round's labels and checkpoint exist, so a crash leaves the last completed round intact and
:meth:`PseudoLabelRounds.run` resumes after it without redoing it.

The driver's plug-ins are callables:

- ``predict_fn(model, items) -> iterable of (item, probs)`` or ``(item, probs, extras)``: ``probs`` is
  ``(C, *spatial)`` for one item, in the item's array space (2D or 3D); ``extras`` (a dict of per-pixel maps,
  e.g. an MC-dropout uncertainty) goes to ``select_fn`` as keyword arguments. The driver calls it in no-grad
  context and leaves the model's mode to it.
- ``select_fn(probs, round) -> label`` or ``(label, extra)``: the pseudo-labeller; ``label`` ``(*spatial)``
  integer classes, :data:`monai_uda.utils.IGNORE_INDEX` (255) marking unlabelled pixels (e.g. top-q or CBST
  dropping low-confidence pixels); ``extra`` is a *bool keep-mask* (False pixels are set to 255) or a *float
  weight map* (saved next to the label, key ``"weight"`` of the datalist). If ``select_fn`` has a
  ``fit(probs_iter, round)`` method (class-wise thresholds over the whole target set, as CBST needs), it is
  called first on a separate prediction pass.
- ``train_fn(model, pseudo_datalist, round) -> model``: ``pseudo_datalist`` is the target items with
  ``"label"`` (and ``"weight"``) paths of the previous round's pseudo-labels and ``"pseudo_label_round"``.

Rounds wrap whole trainings, so the driver is a plain object rather than an ignite event handler; the
round trainer builds and runs an ignite/MONAI trainer inside a round.

Multi-GPU (``distributed=True``, every rank runs :meth:`PseudoLabelRounds.run`): ``train_fn`` runs on every
rank (:class:`RoundTrainer` trains a DDP model on its shard of the pseudo-labelled items); labelling, the
per-round checkpoint and the state file are done by rank 0 alone with its (DDP-synchronised) model, and
the other ranks wait for it and receive the new state before the next round reads its pseudo-labels.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import re
import shutil
import time
import warnings
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm

from monai_uda.engines.pseudo_labellers import ArgmaxLabeller
from monai_uda.utils import IGNORE_INDEX, atomic_json, atomic_torch_save, atomic_write

__all__ = [
    "SelfTraining",
    "RoundTrainer",
    "SlidingWindowPredictor",
    "ImageWindowInferer",
    "PseudoLabelRounds",
    "split_epochs",
    "reset_parameters",
    "ROUND_INITS",
    "STATE_FILE",
]

#: name of the JSON state file in ``output_dir``
STATE_FILE = "rounds_state.json"
#: how each round's model starts: the previous round's (fine-tune), the starting (source) model, or random weights
ROUND_INITS = ("finetune", "source", "random")

logger = logging.getLogger(__name__)

_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz")


def split_epochs(max_epochs: int, num_rounds: int) -> list[int]:
    """Epochs of rounds ``1..T``: ``max_epochs`` spread as evenly as possible (earlier rounds get the rest).

    So that ``T`` rounds together cost one training of ``max_epochs`` epochs.

    Raises:
        ValueError: ``num_rounds`` < 1 or larger than ``max_epochs`` (a round without training).
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}.")
    if max_epochs < num_rounds:
        raise ValueError(
            f"max_epochs ({max_epochs}) must be >= num_rounds ({num_rounds}): one epoch per round at least."
        )
    base, rest = divmod(int(max_epochs), int(num_rounds))
    return [base + (1 if r < rest else 0) for r in range(num_rounds)]


def _item_name(item: Any, fallback: str) -> str:
    name = None
    if isinstance(item, dict):
        name = item.get("name")
        img = item.get("image")
        if name is None and isinstance(img, (str, os.PathLike)):
            name = os.path.basename(os.fspath(img))
            for ext in _EXTENSIONS:
                if name.lower().endswith(ext):
                    name = name[: -len(ext)]
                    break
    name = fallback if not name else str(name)
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def _to_4x4(affine: Any, spatial_ndim: int) -> np.ndarray:
    if torch.is_tensor(affine):
        affine = affine.detach().cpu().numpy()
    a = np.asarray(affine, dtype=np.float64)
    if a.shape == (4, 4):
        return a
    if a.shape == (3, 3) and spatial_ndim == 2:
        out = np.eye(4)
        out[:2, :2], out[:2, 3] = a[:2, :2], a[:2, 2]
        return out
    raise ValueError(f"cannot use an affine of shape {a.shape} for a {spatial_ndim}D pseudo-label.")


def _item_affine(item: Any, probs: Any, spatial_ndim: int) -> np.ndarray:
    """The item's ``"affine"``, else the MetaTensor affine of ``probs``, else the NIfTI image header, else I."""
    affine = item.get("affine") if isinstance(item, dict) else None
    if affine is None and hasattr(probs, "affine") and getattr(probs, "affine", None) is not None:
        affine = probs.affine
    if affine is None and isinstance(item, dict) and isinstance(item.get("image"), (str, os.PathLike)):
        path = os.fspath(item["image"])
        if path.lower().endswith((".nii", ".nii.gz")) and os.path.exists(path):
            affine = nib.load(path).affine
    return np.eye(4) if affine is None else _to_4x4(affine, spatial_ndim)




# ------------------------------------------------------------------------------------------- prediction
class ImageWindowInferer:
    """Sliding-window inference whose window is fitted to each image: few large windows instead of many crops.

    The window of an image of spatial shape ``S`` is, per axis, ``S`` rounded up to a multiple of ``multiple``,
    capped at ``max(max_side, min_roi_size)`` (``max_side`` rounded down to the multiple); a fixed ``roi_size``
    replaces the rule. Called like a MONAI inferer: ``inferer(inputs, network)``.

    Args:
        min_roi_size: the smallest cap per axis (e.g. the training crop size).
        max_side: cap of an automatic window side.
        multiple: every window side is a multiple of it (16 for ``UDAUNet``).
        sw_batch_size: windows per forward pass.
        overlap: window overlap.
        roi_size: a fixed window (None: fitted to each image).
    """

    def __init__(
        self,
        min_roi_size: Sequence[int],
        max_side: int = 256,
        multiple: int = 16,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        roi_size: Sequence[int] | None = None,
    ) -> None:
        self.min_roi_size = [int(v) for v in min_roi_size]
        self.multiple = int(multiple)
        if self.multiple < 1 or int(max_side) < self.multiple:
            raise ValueError(f"multiple ({multiple}) must be >= 1 and max_side ({max_side}) >= multiple.")
        self.max_side = int(max_side) // self.multiple * self.multiple
        self.roi_size = None if roi_size is None else [int(v) for v in roi_size]
        if self.roi_size is not None and (
            len(self.roi_size) != len(self.min_roi_size) or any(v % self.multiple for v in self.roi_size)
        ):
            raise ValueError(
                f"roi_size {roi_size} must have {len(self.min_roi_size)} sides, each divisible by {self.multiple}."
            )
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)

    def window(self, spatial_shape: Sequence[int]) -> list[int]:
        """The window used for an image of ``spatial_shape``."""
        if self.roi_size is not None:
            return list(self.roi_size)
        m = self.multiple
        return [min(-(-int(n) // m) * m, max(self.max_side, int(r))) for n, r in zip(spatial_shape, self.min_roi_size)]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from monai.inferers import sliding_window_inference

        roi = self.window(inputs.shape[2:])
        return sliding_window_inference(inputs, roi, self.sw_batch_size, network, self.overlap, *args, **kwargs)


class SlidingWindowPredictor:
    """The default ``predict_fn``: softmax probabilities ``(C, *spatial)`` in each item's own array space.

    Each item goes through ``transform`` (loading, channels, 3D orientation/spacing, intensity normalisation;
    images only), the network runs through ``inferer`` (e.g. MONAI ``SlidingWindowInferer`` or
    :class:`ImageWindowInferer`) in evaluation mode, and when ``transform`` applied invertible spatial
    operations (3D: orientation, resampling) MONAI ``Invertd`` maps the probabilities back to the item's array
    space, so that pseudo-labels are written on the grid of the image file.

    Args:
        transform: MONAI dictionary transform of an unlabelled item (e.g. ``segmentation_transforms("target")``).
        inferer: ``inferer(image (1, C_in, *spatial), network) -> logits``.
        device: where the network runs.
        image_key: the image key of the items.

    :meth:`predict` takes an optional ``forward(network, image) -> {"pred": probs, **maps}`` hook; every map
    is inverted with the probabilities and yielded as ``extras`` (used by MC-dropout's stochastic passes).
    """

    def __init__(
        self, transform: Callable, inferer: Callable, device: str | torch.device = "cpu", image_key: str = "image"
    ) -> None:
        self.transform = transform
        self.inferer = inferer
        self.device = torch.device(device)
        self.image_key = image_key

    def probabilities(self, network: Callable, image: torch.Tensor) -> torch.Tensor:
        """``softmax(inferer(image, network))`` over the class axis, ``(1, C, *spatial)``."""
        return torch.softmax(torch.as_tensor(self.inferer(image, network)), dim=1)

    def _default_forward(self, network: torch.nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
        network.eval()
        return {"pred": self.probabilities(network, image)}

    def predict(
        self,
        model: torch.nn.Module,
        items: Sequence[Any],
        forward: Callable[[torch.nn.Module, torch.Tensor], Mapping[str, torch.Tensor]] | None = None,
    ) -> Iterator[tuple]:
        """Yield ``(item, probs)`` (or ``(item, probs, extras)`` when ``forward`` returns more maps than ``"pred"``)."""
        from monai.data import MetaTensor
        from monai.transforms import Invertd

        forward = self._default_forward if forward is None else forward
        key = self.image_key
        for item in items:
            data = self.transform(dict(item))
            image = data[key]
            x = torch.as_tensor(image).unsqueeze(0).to(self.device)
            maps = dict(forward(model, x))
            if "pred" not in maps:
                raise KeyError("the forward hook must return the probabilities under 'pred'.")
            meta = dict(getattr(image, "meta", {}))
            ops = list(getattr(image, "applied_operations", []))
            for k, v in maps.items():
                data[k] = MetaTensor(torch.as_tensor(v)[0].float().cpu(), meta=dict(meta), applied_operations=list(ops))
            if ops:  # 3D: orientation / resampling back to the item's array space
                data = Invertd(keys=list(maps), transform=self.transform, orig_keys=[key] * len(maps),
                               nearest_interp=False)(data)
            extras = {k: data[k] for k in maps if k != "pred"}
            yield (item, data["pred"], extras) if extras else (item, data["pred"])

    __call__ = predict


# ---------------------------------------------------------------------------------------------- training
def reset_parameters(model: torch.nn.Module) -> torch.nn.Module:
    """Re-initialise ``model`` in place: ``reset_parameters()`` of every sub-module that has one, innermost first
    (so that a wrapper's own ``reset_parameters``, e.g. a head with a chosen initial value, has the last word)."""
    for module in reversed(list(model.modules())):
        fn = getattr(module, "reset_parameters", None)
        if callable(fn):
            fn()
    return model


def _loss_value(output: Any) -> float:
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], Mapping):
        output = output[0]
    return float(torch.as_tensor(output["loss"]).detach())


class RoundTrainer:
    """The one round trainer: a MONAI trainer built and run per round on the pseudo-labelled items (``train_fn``).

    ``RoundTrainer(...)(model, pseudo_datalist, round)`` trains ``model`` for ``epochs`` of round ``round`` and
    returns it. Everything method-specific is a config-level object: the trainer class (MONAI
    ``SupervisedTrainer``; BUDA-Seg's ``VarianceSupervisedTrainer`` for ``(logits, variance)`` networks), the
    loss, the training inferer (MC-dropout's stochastic passes are an inferer), the transforms, the optimizer.

    Args:
        transform: transform of a pseudo-labelled item (``"image"`` + ``"label"`` class indices / 255; no label
            mapping).
        optimizer: a factory ``params -> torch.optim.Optimizer`` (e.g. ``functools.partial(torch.optim.Adam,
            lr=1e-3)``; in a config ``{"_target_": "torch.optim.Adam", "_mode_": "callable", "lr": ...}``): a
            fresh optimiser every round; or an ``Optimizer`` instance over the model's parameters, kept (with
            its state) across rounds (fine-tuning only).
        loss_function: the training loss; it must ignore :data:`monai_uda.utils.IGNORE_INDEX` pixels.
        epochs: epochs of every round (an int), or a list, one per round (e.g. :func:`split_epochs`).
        trainer_class: the MONAI trainer built every round (``SupervisedTrainer`` by default).
        inferer: training inferer (MONAI ``SimpleInferer`` by default).
        batch_size: items per batch (per rank with DDP).
        epoch_length: iterations per epoch (None: one pass over the data).
        device: training device.
        amp: automatic mixed precision.
        distributed: multi-GPU: the model is wrapped in ``DistributedDataParallel`` and the items come from a
            ``DistributedSampler`` shard (seeded by the round); without a process group a plain process.
        num_workers: data loader workers (and caching threads).
        cache_rate: ``CacheDataset`` cache rate of the pseudo-labelled items.
        labelled_items: items with real labels trained together with the pseudo-labelled ones every round
            (e.g. PAST's translated source with its source labels), first in the dataset.
        labelled_transform: transform of ``labelled_items``.
        train_handlers: ignite/MONAI handlers attached to every round's trainer (None: a per-epoch loss log on
            rank 0). A multi-GPU config passes rank-0 filtered handlers.
        trainer_kwargs: further arguments of ``trainer_class`` (e.g. ``{"postprocessing": null}``).
        decollate: the trainer's ``decollate``.
        progress: an ignite progress bar per round (rank 0).
        name: name in logs and progress bars.
        seed: with a seed, every round starts with ``set_determinism(seed + round)``, so its data order, crops and
            augmentation depend on the seed and the round alone: a run resumed after round ``r`` trains round
            ``r + 1`` exactly as an uninterrupted run does; a loss with a random stream of its own
            (``set_random_state``, e.g. the variational sampling loss's ε) is restarted from the same value.
            None: the global random state as it is.

    ``history`` holds one record per trained round: ``round``, ``epochs``, ``iterations`` and ``train_loss`` (the
    mean loss of the round's last epoch).
    """

    def __init__(
        self,
        transform: Callable,
        optimizer: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer] | torch.optim.Optimizer,
        loss_function: Callable,
        epochs: int | Sequence[int] = 1,
        trainer_class: type | None = None,
        inferer: Callable | None = None,
        batch_size: int = 4,
        epoch_length: int | None = None,
        device: str | torch.device = "cpu",
        amp: bool = False,
        distributed: bool = False,
        num_workers: int = 0,
        cache_rate: float = 1.0,
        labelled_items: Sequence[dict] | None = None,
        labelled_transform: Callable | None = None,
        train_handlers: Sequence[Any] | None = None,
        trainer_kwargs: Mapping[str, Any] | None = None,
        decollate: bool = False,
        progress: bool = True,
        name: str = "self-training",
        seed: int | None = None,
    ) -> None:
        if not (callable(optimizer) or isinstance(optimizer, torch.optim.Optimizer)):
            raise TypeError(
                f"optimizer must be a factory params -> Optimizer or an Optimizer, got {type(optimizer).__name__}."
            )
        if isinstance(epochs, (int, np.integer)):
            if int(epochs) < 1:
                raise ValueError(f"epochs must be >= 1, got {epochs}.")
            self.epochs: int | list[int] = int(epochs)
        else:
            self.epochs = [int(e) for e in epochs]
            if not self.epochs or min(self.epochs) < 1:
                raise ValueError(f"epochs must be a non-empty list of positive epochs per round, got {epochs}.")
        if labelled_items and labelled_transform is None:
            raise ValueError("labelled_items need a labelled_transform.")
        self.transform = transform
        self.optimizer = optimizer
        self.loss_function = loss_function
        self.trainer_class = trainer_class
        self.inferer = inferer
        self.batch_size = int(batch_size)
        self.epoch_length = None if epoch_length is None else int(epoch_length)
        self.device = torch.device(device)
        self.amp = bool(amp)
        self.distributed = bool(distributed)
        self.num_workers = int(num_workers)
        self.cache_rate = float(cache_rate)
        self.labelled_items = [dict(it) for it in labelled_items or []]
        self.labelled_transform = labelled_transform
        self.train_handlers = None if train_handlers is None else list(train_handlers)
        self.trainer_kwargs = dict(trainer_kwargs or {})
        self.seed = None if seed is None else int(seed)
        self.decollate = bool(decollate)
        self.progress = bool(progress)
        self.name = str(name)
        self.history: list[dict[str, Any]] = []
        self.trainer: Any = None

    def epochs_of(self, round_index: int) -> int:
        """Training epochs of round ``round_index`` (1-based)."""
        if isinstance(self.epochs, int):
            return self.epochs
        if not 1 <= round_index <= len(self.epochs):
            raise ValueError(f"no epochs for round {round_index}: epochs per round are {self.epochs}.")
        return self.epochs[round_index - 1]

    def state_dict(self) -> dict[str, Any]:
        """What the next round inherits from this one: the optimizer's state when one optimizer instance serves
        every round (PAST); empty with an optimizer factory (a fresh optimizer per round)."""
        if isinstance(self.optimizer, torch.optim.Optimizer):
            return {"optimizer": self.optimizer.state_dict()}
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a resumed run continues with the optimizer moments of its last round)."""
        if "optimizer" in state and isinstance(self.optimizer, torch.optim.Optimizer):
            self.optimizer.load_state_dict(state["optimizer"])

    def _optimizer_for(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        if not isinstance(self.optimizer, torch.optim.Optimizer):
            return self.optimizer(model.parameters())
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if any(id(p) not in held for p in model.parameters() if p.requires_grad):
            raise ValueError(
                "the optimizer instance does not hold this model's parameters (a fresh model per round needs an "
                "optimizer factory, e.g. {'_target_': 'torch.optim.Adam', '_mode_': 'callable', 'lr': ...})."
            )
        return self.optimizer

    def _dataset(self, datalist: list[dict]) -> torch.utils.data.Dataset:
        from monai.data import CacheDataset, Dataset

        data = CacheDataset(data=datalist, transform=self.transform, cache_rate=self.cache_rate,
                            num_workers=self.num_workers, progress=False)
        if not self.labelled_items:
            return data
        return torch.utils.data.ConcatDataset([Dataset(self.labelled_items, self.labelled_transform), data])

    def __call__(self, model: torch.nn.Module, datalist: list[dict], round_index: int) -> torch.nn.Module:
        from ignite.engine import Events
        from monai.data import DataLoader
        from monai.engines import SupervisedTrainer
        from monai.handlers import StatsHandler, from_engine
        from monai.inferers import SimpleInferer

        epochs = self.epochs_of(round_index)
        if self.seed is not None:  # each round's data order and crops depend on (seed, round) alone: resume is exact
            from monai.utils import set_determinism

            set_determinism(seed=self.seed + int(round_index))
            if callable(getattr(self.loss_function, "set_random_state", None)):  # a loss with a stream of its own
                self.loss_function.set_random_state(self.seed + int(round_index))
        dataset = self._dataset(datalist)
        model = model.to(self.device)
        network, rank0 = model, True
        if self.distributed:
            from monai.data import DistributedSampler

            from monai_uda.distributed import get_rank, get_world_size, is_rank0, wrap_ddp

            sampler = DistributedSampler(dataset, shuffle=True, even_divisible=True,
                                         seed=(self.seed or 0) + int(round_index),
                                         num_replicas=get_world_size(), rank=get_rank())
            loader = DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)
            network, rank0 = wrap_ddp(model, self.device), is_rank0()
        else:
            loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)
        optimizer = self._optimizer_for(model)
        if self.train_handlers is None:
            handlers = [
                StatsHandler(tag_name=f"round{round_index}_loss", output_transform=from_engine(["loss"], first=True),
                             iteration_log=False, name=__name__)
            ] if rank0 else []
        else:
            handlers = list(self.train_handlers)
        trainer_class = SupervisedTrainer if self.trainer_class is None else self.trainer_class
        trainer = trainer_class(
            device=self.device,
            max_epochs=epochs,
            train_data_loader=loader,
            network=network,
            optimizer=optimizer,
            loss_function=self.loss_function,
            inferer=SimpleInferer() if self.inferer is None else self.inferer,
            epoch_length=self.epoch_length,
            train_handlers=handlers,
            amp=self.amp,
            decollate=self.decollate,
            **self.trainer_kwargs,
        )
        losses: list[float] = []

        @trainer.on(Events.ITERATION_COMPLETED)
        def _record(engine):
            value = _loss_value(engine.state.output)
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{self.name}: the loss is {value} in round {round_index}, iteration {engine.state.iteration}."
                )
            losses.append(value)

        if self.progress and rank0:
            from ignite.handlers import ProgressBar

            ProgressBar(desc=f"{self.name} round {round_index}", persist=False).attach(trainer)
        self.trainer = trainer
        trainer.run()
        last = losses[-(self.epoch_length or len(loader)):] if losses else []
        self.history.append({"round": int(round_index), "epochs": epochs, "iterations": trainer.state.iteration,
                             "train_loss": sum(last) / len(last) if last else float("nan")})
        logger.info("%s round %d: %d iterations on %d items", self.name, round_index, trainer.state.iteration,
                    len(dataset))
        return model


# ------------------------------------------------------------------------------------------------ engine
class SelfTraining:
    """Pseudo-label self-training of ``network`` on ``items``, assembled from config-level objects.

    Example (what a bundle config instantiates)::

        SelfTraining(
            network=net, items=uda.split("target_training"), output_dir="eval/pseudo_labels", num_rounds=3,
            pseudo_labeller=ArgmaxLabeller(),
            predictor=SlidingWindowPredictor(segmentation_transforms("target", uda), SlidingWindowInferer([64, 64])),
            train_fn=RoundTrainer(train_transform, functools.partial(torch.optim.Adam, lr=1e-3), loss,
                                  epochs=split_epochs(8, 3)),
            checkpoint="models/model.pt",
        ).run()

    Args:
        network: the starting model (round 0 labels the target with it), e.g. the source model, possibly wrapped
            for training (BUDA-Seg's variance head).
        items: the target items to pseudo-label (e.g. ``target_training`` images; their labels are never read:
            the pseudo-label replaces ``"label"``).
        output_dir: the rounds folder (pseudo-labels, per-round checkpoints, ``rounds_state.json``).
        train_fn: trains a model on a round's pseudo-labelled items (:class:`RoundTrainer`).
        num_rounds: T, training rounds after the round-0 labelling.
        pseudo_labeller: ``(probs, round) -> label | (label, mask | weight)`` with optional ``fit`` and
            ``predict`` (:mod:`monai_uda.engines.pseudo_labellers`); argmax by default.
        predictor: the prediction (:class:`SlidingWindowPredictor`), unless the labeller has its own ``predict``.
        round_init: ``"finetune"`` (continue from the previous round's model), ``"source"`` (every round restarts
            from a copy of ``network`` as it was given here, whatever a resume loads into it later) or
            ``"random"`` (such a copy re-initialised by :func:`reset_parameters`).
        segmentation_network: ``model -> the segmentation network inside it`` (e.g. without a training-only
            head); it is what predicts and what is exported. None: the model itself.
        export_network: a plain evaluation network (e.g. ``UDAUNet``) the final segmentation weights are loaded
            into (strictly) before they are saved, so ``checkpoint`` is guaranteed to load into it.
        checkpoint: where the adapted segmentation network's state dict is saved (None: not saved).
        full_checkpoint: where the whole trained model (with training-only parts) is saved too (None: not saved).
        summary_file: where the run summary JSON is written (None: not written); also :attr:`summary`.
        summary: extra fields of the summary (e.g. ``{"method": "buda"}``).
        resume: continue after the last completed round in ``output_dir``; False deletes its rounds first.
        collapse_threshold, background, save_checkpoints, progress: as in :class:`PseudoLabelRounds`.
        distributed: multi-GPU (process group initialised, every rank runs :meth:`run`): ``train_fn`` runs on
            every rank; rank 0 alone labels, writes the rounds, the checkpoints and the summary.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        items: Sequence[Any],
        output_dir: str,
        train_fn: Callable[[torch.nn.Module, list[dict], int], torch.nn.Module],
        num_rounds: int = 3,
        pseudo_labeller: Callable[..., Any] | None = None,
        predictor: Callable[[torch.nn.Module, Sequence[Any]], Iterable[tuple]] | None = None,
        round_init: str = "finetune",
        segmentation_network: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
        export_network: torch.nn.Module | None = None,
        checkpoint: str | None = None,
        full_checkpoint: str | None = None,
        summary_file: str | None = None,
        summary: Mapping[str, Any] | None = None,
        resume: bool = True,
        collapse_threshold: float = 0.01,
        background: int = 0,
        save_checkpoints: bool = True,
        progress: bool = True,
        distributed: bool = False,
    ) -> None:
        if not isinstance(network, torch.nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
            raise TypeError("pass the unwrapped network: the round trainer wraps it in DistributedDataParallel.")
        if round_init not in ROUND_INITS:
            raise ValueError(f"round_init must be one of {ROUND_INITS}, got {round_init!r}.")
        self.pseudo_labeller = ArgmaxLabeller() if pseudo_labeller is None else pseudo_labeller
        if predictor is None and not callable(getattr(self.pseudo_labeller, "predict", None)):
            raise ValueError("a predictor is needed (the pseudo-labeller has no predict method).")
        self.network = network
        self.items = list(items)
        self.output_dir = os.path.abspath(output_dir)
        self.train_fn = train_fn
        self.num_rounds = int(num_rounds)
        self.predictor = predictor
        self.round_init = round_init
        self.segmentation_network = segmentation_network
        self.export_network = export_network
        self.checkpoint = None if checkpoint is None else os.path.abspath(checkpoint)
        self.full_checkpoint = None if full_checkpoint is None else os.path.abspath(full_checkpoint)
        self.summary_file = None if summary_file is None else os.path.abspath(summary_file)
        self.summary_extra = dict(summary or {})
        self.resume = bool(resume)
        self.distributed = bool(distributed)
        self.summary: dict[str, Any] | None = None
        self.rounds = PseudoLabelRounds(
            num_rounds=self.num_rounds, output_dir=self.output_dir, predict_fn=self.predict,
            select_fn=self.pseudo_labeller, train_fn=train_fn, model_factory=self._model_factory(),
            collapse_threshold=collapse_threshold, background=background, save_checkpoints=save_checkpoints,
            progress=progress, distributed=self.distributed,
        )

    def seg_network(self, model: torch.nn.Module) -> torch.nn.Module:
        """The segmentation network inside ``model`` (what predicts and what is exported)."""
        return model if self.segmentation_network is None else self.segmentation_network(model)

    def predict(self, model: torch.nn.Module, items: Sequence[Any]) -> Iterable[tuple]:
        """``predict_fn`` of the rounds: the labeller's own ``predict`` if it has one, else the predictor."""
        net = self.seg_network(model)
        own = getattr(self.pseudo_labeller, "predict", None)
        return own(net, items) if callable(own) else self.predictor(net, items)

    def _model_factory(self) -> Callable[[], torch.nn.Module] | None:
        if self.round_init == "finetune":
            return None
        start = copy.deepcopy(self.network)  # at construction: run() loads a resumed round into self.network
        if self.round_init == "random":
            return lambda: reset_parameters(copy.deepcopy(start))
        return lambda: copy.deepcopy(start)

    def clear_rounds(self) -> None:
        """Delete the rounds and the state file of ``output_dir`` (other files are kept)."""
        if os.path.isdir(self.output_dir):
            for name in os.listdir(self.output_dir):
                path = os.path.join(self.output_dir, name)
                if name == STATE_FILE:
                    os.remove(path)
                elif name.startswith("round_") and os.path.isdir(path):
                    shutil.rmtree(path)

    def _on_rank0(self, fn: Callable, *args: Any) -> Any:
        if self.distributed:
            from monai_uda.distributed import on_rank0

            return on_rank0(fn, *args)
        return fn(*args)

    def run(self) -> torch.nn.Module:
        """Run (or resume) the rounds, save the adapted model and the summary; returns the final model."""
        t0 = time.time()
        if not self.resume:
            self._on_rank0(self.clear_rounds)
        model = self.rounds.run(self.network, self.items)
        self.summary = self._on_rank0(self._save_outputs, model, t0)
        return model

    def _save_outputs(self, model: torch.nn.Module, t0: float) -> dict:
        seg = self.seg_network(model)
        if self.export_network is not None:
            try:
                self.export_network.load_state_dict(seg.state_dict())
            except RuntimeError as e:
                raise RuntimeError(
                    f"the adapted segmentation network does not load into export_network "
                    f"({type(self.export_network).__name__}): {e}"
                ) from e
            seg = self.export_network
        if self.checkpoint is not None:
            atomic_torch_save({k: v.detach().cpu() for k, v in seg.state_dict().items()}, self.checkpoint)
        if self.full_checkpoint is not None:
            atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, self.full_checkpoint)
        state = self.rounds.load_state() or {}
        rounds = {int(r): v for r, v in state.get("rounds", {}).items()}
        epochs = getattr(self.train_fn, "epochs", None)
        summary = {
            **self.summary_extra,
            "num_rounds": self.num_rounds,
            "round_init": self.round_init,
            "epochs_per_round": epochs if isinstance(epochs, list) else [epochs] * self.num_rounds,
            "adapt_seconds": round(time.time() - t0, 3),
            "foreground_fraction": {r: v.get("foreground_fraction") for r, v in sorted(rounds.items())},
            "collapsed_rounds": [r for r, v in sorted(rounds.items()) if v.get("collapsed")],
            "train_history": [v["train"] for _, v in sorted(rounds.items()) if "train" in v],
            "checkpoint": self.checkpoint,
            "rounds_dir": self.output_dir,
        }
        if self.summary_file is not None:
            atomic_json(summary, self.summary_file)
        return summary


# ------------------------------------------------------------------------------------------------ driver
class PseudoLabelRounds:
    """Resumable pseudo-label rounds driver (see the module docstring for the plug-in callables).

    Args:
        num_rounds: T, the number of train-and-relabel rounds after the round-0 labelling.
        output_dir: where rounds, checkpoints and the state file are written.
        predict_fn: ``(model, items) -> iterable of (item, probs (C, *spatial))`` or of
            ``(item, probs, extras)`` (``extras``: a dict passed to ``select_fn`` as keyword arguments).
        select_fn: the pseudo-labeller, ``(probs, round) -> label`` or ``(label, keep-mask | weight)``;
            :class:`~monai_uda.engines.pseudo_labellers.ArgmaxLabeller` if None.
        train_fn: ``(model, pseudo_datalist, round) -> trained model``.
        model_factory: when given, every round trains a fresh ``model_factory()``; otherwise the current
            model is fine-tuned.
        collapse_threshold: a round whose foreground fraction (labelled pixels that are not
            ``background``) is below this is reported as collapsed (``warnings.warn`` + log).
        background: background class index.
        save_checkpoints: write ``round_<r>/model.pt`` (needed to resume).
        progress: show tqdm progress bars.
        distributed: multi-GPU rounds (see the module docstring); without a process group: the single-process rounds.
    """

    def __init__(
        self,
        num_rounds: int,
        output_dir: str,
        predict_fn: Callable[[torch.nn.Module, Sequence[Any]], Iterable[tuple]],
        select_fn: Callable[[torch.Tensor, int], Any] | None,
        train_fn: Callable[[torch.nn.Module, list[dict], int], torch.nn.Module],
        model_factory: Callable[[], torch.nn.Module] | None = None,
        collapse_threshold: float = 0.01,
        background: int = 0,
        save_checkpoints: bool = True,
        progress: bool = True,
        distributed: bool = False,
    ):
        if int(num_rounds) < 0:
            raise ValueError(f"num_rounds must be >= 0, got {num_rounds}.")
        for name, fn in (("predict_fn", predict_fn), ("train_fn", train_fn)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}.")
        if model_factory is not None and not callable(model_factory):
            raise TypeError(f"model_factory must be callable or None, got {type(model_factory).__name__}.")
        if not 0 <= collapse_threshold < 1:
            raise ValueError(f"collapse_threshold must be in [0, 1), got {collapse_threshold}.")
        self.num_rounds = int(num_rounds)
        self.output_dir = os.path.abspath(output_dir)
        self.predict_fn = predict_fn
        self.select_fn = ArgmaxLabeller() if select_fn is None else select_fn
        self.train_fn = train_fn
        self.model_factory = model_factory
        self.collapse_threshold = float(collapse_threshold)
        self.background = int(background)
        self.save_checkpoints = save_checkpoints
        self.progress = progress
        self.distributed = bool(distributed)

    # ----------------------------------------------------------------------------------- state file
    @property
    def state_path(self) -> str:
        return os.path.join(self.output_dir, STATE_FILE)

    def load_state(self) -> dict | None:
        """The JSON state (None before the first completed round)."""
        if not os.path.exists(self.state_path):
            return None
        try:
            with open(self.state_path) as f:
                return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"corrupt pseudo-label rounds state file {self.state_path}: {e}") from e

    def _save_state(self, state: dict) -> None:
        atomic_json(state, self.state_path)

    @staticmethod
    def _item_ids(items: Sequence[Any]) -> list[str]:
        ids = []
        for i, it in enumerate(items):
            img = it.get("image") if isinstance(it, dict) else None
            ids.append(str(img) if isinstance(img, (str, os.PathLike)) else f"#{i}")
        return ids

    # -------------------------------------------------------------------------------- the datalist
    def pseudo_datalist(self, round: int, target_items: Sequence[Any], state: dict | None = None) -> list[dict]:
        """Target items with the ``"label"`` (and ``"weight"``) files of ``round``'s pseudo-labels."""
        state = self.load_state() if state is None else state
        if state is None or str(round) not in state["rounds"]:
            raise KeyError(f"round {round} has not been completed in {self.output_dir}.")
        out = []
        for rec in state["rounds"][str(round)]["labels"]:
            item = target_items[rec["index"]]
            entry = dict(item) if isinstance(item, dict) else {"image": item}
            entry["label"] = os.path.join(self.output_dir, rec["label"])
            if rec.get("weight"):
                entry["weight"] = os.path.join(self.output_dir, rec["weight"])
            entry["pseudo_label_round"] = round
            out.append(entry)
        return out

    # ----------------------------------------------------------------------------------- labelling
    def _split_selection(self, selected: Any) -> tuple[np.ndarray, np.ndarray | None]:
        extra = None
        if isinstance(selected, (tuple, list)):
            if len(selected) != 2:
                raise ValueError("select_fn must return a label or a pair (label, keep-mask or weight map).")
            selected, extra = selected
        label = torch.as_tensor(selected).detach().cpu()
        if label.is_floating_point():
            raise TypeError("select_fn must return an integer label map (class indices), got a float tensor.")
        label = label.numpy().astype(np.int64)
        weight = None
        if extra is not None:
            extra_t = torch.as_tensor(extra).detach().cpu()
            if extra_t.shape != label.shape:
                raise ValueError(f"select_fn's mask/weight shape {tuple(extra_t.shape)} != label shape {label.shape}.")
            if extra_t.dtype == torch.bool:
                label = np.where(extra_t.numpy(), label, IGNORE_INDEX)
            else:
                weight = extra_t.float().numpy()
        return label, weight

    def _label_round(self, model: torch.nn.Module, target_items: Sequence[Any], r: int) -> dict:
        round_dir = os.path.join(self.output_dir, f"round_{r}")
        os.makedirs(round_dir, exist_ok=True)
        if hasattr(self.select_fn, "fit"):
            with torch.no_grad():
                self.select_fn.fit((out[1] for out in self.predict_fn(model, target_items)), r)
        index_of = {id(it): i for i, it in enumerate(target_items)}
        records, used, n_fg, n_valid = [], set(), 0, 0
        with torch.no_grad():
            stream = self.predict_fn(model, target_items)
            for count, out in enumerate(
                tqdm(stream, total=len(target_items), desc=f"pseudo-labels round {r}", disable=not self.progress)
            ):
                item, probs = out[0], out[1]
                extras = out[2] if len(out) > 2 and out[2] else {}
                if probs.ndim not in (3, 4):
                    raise ValueError(
                        f"predict_fn must yield probs of shape (C, *spatial) 2D/3D, got {tuple(probs.shape)}."
                    )
                if not bool(torch.isfinite(torch.as_tensor(probs)).all()):
                    raise ValueError(f"predict_fn yielded non-finite probabilities for item {count} in round {r}.")
                index = index_of.get(id(item), count)
                label, weight = self._split_selection(self.select_fn(probs, r, **extras))
                if label.shape != tuple(probs.shape[1:]):
                    raise ValueError(
                        f"select_fn label shape {label.shape} != probs spatial shape {tuple(probs.shape[1:])}."
                    )
                num_classes = probs.shape[0]
                bad = (label < 0) | ((label >= num_classes) & (label != IGNORE_INDEX))
                if bad.any():
                    raise ValueError(f"select_fn returned labels outside [0, {num_classes}) and != {IGNORE_INDEX}.")
                valid = label != IGNORE_INDEX
                n_valid += int(valid.sum())
                n_fg += int((valid & (label != self.background)).sum())
                name = _item_name(item, f"item_{index:05d}")
                while name in used:
                    name = f"{name}_{index:05d}"
                used.add(name)
                affine = _item_affine(item, probs, label.ndim)
                dtype = np.uint8 if label.max(initial=0) <= np.iinfo(np.uint8).max else np.int16
                rel = f"round_{r}/{name}.nii.gz"
                atomic_write(
                    os.path.join(self.output_dir, rel),
                    lambda tmp, a=label.astype(dtype), af=affine: nib.save(nib.Nifti1Image(a, af), tmp))
                rec = {"index": index, "label": rel, "weight": None}
                if weight is not None:
                    wrel = f"round_{r}/{name}_weight.nii.gz"
                    atomic_write(
                        os.path.join(self.output_dir, wrel),
                        lambda tmp, a=weight.astype(np.float32), af=affine: nib.save(nib.Nifti1Image(a, af), tmp))
                    rec["weight"] = wrel
                records.append(rec)
        if len(records) != len(target_items):
            raise RuntimeError(
                f"predict_fn yielded {len(records)} items for {len(target_items)} target items in round {r}."
            )
        fg = n_fg / n_valid if n_valid else 0.0
        collapsed = fg < self.collapse_threshold
        if collapsed:
            msg = (
                f"pseudo-label round {r} collapsed: foreground fraction {fg:.4g} < {self.collapse_threshold} "
                f"({self.output_dir}/round_{r})."
            )
            logger.warning(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
        return {"labels": records, "foreground_fraction": fg, "collapsed": collapsed}

    def _save_checkpoint(self, model: torch.nn.Module, r: int) -> str | None:
        if not self.save_checkpoints:
            return None
        rel = f"round_{r}/model.pt"
        atomic_torch_save(model.state_dict(), os.path.join(self.output_dir, rel))
        return rel

    def _save_train_state(self, r: int) -> str | None:
        """``round_<r>/train_state.pt``: the train_fn's state the next round starts from (its optimizer)."""
        get = getattr(self.train_fn, "state_dict", None)
        state = get() if self.save_checkpoints and callable(get) else None
        if not state:
            return None
        rel = f"round_{r}/train_state.pt"
        atomic_torch_save(state, os.path.join(self.output_dir, rel))
        return rel

    # ------------------------------------------------------------------------------------------ run
    def run(self, model: torch.nn.Module, target_items: Sequence[Any]) -> torch.nn.Module:
        """Run (or resume) rounds ``0..num_rounds``; returns the model of the last round.

        Args:
            model: the source model (round 0 labels the target with it). On resume, the checkpoint of the
                last completed round is loaded into it.
            target_items: the target training items (e.g. datalist dicts with ``"image"``); never their labels.
        """
        target_items = list(target_items)
        if not target_items:
            raise ValueError("target_items is empty.")
        ids = self._item_ids(target_items)
        if self.distributed:  # one reading for all ranks, before rank 0 writes anything
            from monai_uda.distributed import on_rank0

            state = on_rank0(self._prepare_output)
        else:
            state = self._prepare_output()
        if state is None:
            state = {"version": 1, "num_rounds": self.num_rounds, "items": ids, "completed": [], "rounds": {}}
        elif state.get("items") != ids:
            raise ValueError(
                f"target_items differ from those of the rounds already in {self.state_path}; "
                "use a new output_dir or the same items."
            )
        state["num_rounds"] = self.num_rounds
        completed = sorted(int(r) for r in state["completed"])
        start = completed[-1] + 1 if completed else 0
        if completed:
            last = completed[-1]
            ckpt = state["rounds"][str(last)].get("checkpoint")
            if ckpt is None:
                raise RuntimeError(f"round {last} in {self.state_path} has no checkpoint; cannot resume.")
            path = os.path.join(self.output_dir, ckpt)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            train_state = state["rounds"][str(last)].get("train_state")
            load = getattr(self.train_fn, "load_state_dict", None)
            if train_state and callable(load):
                load(torch.load(os.path.join(self.output_dir, train_state), map_location="cpu", weights_only=True))
            logger.info("resuming pseudo-label rounds after completed round %d (%s)", last, self.output_dir)
        for r in tqdm(range(start, self.num_rounds + 1), desc="pseudo-label rounds", disable=not self.progress):
            t0 = time.time()
            if r > 0:
                datalist = self.pseudo_datalist(r - 1, target_items, state)
                if self.model_factory is not None:
                    model = self.model_factory()
                trained = self.train_fn(model, datalist, r)
                if not isinstance(trained, torch.nn.Module):
                    raise TypeError(f"train_fn must return the trained torch.nn.Module, got {type(trained).__name__}.")
                model = trained
            if self.distributed:  # rank 0 labels and writes; every rank gets the new state (or rank 0's error)
                from monai_uda.distributed import on_rank0

                state = on_rank0(self._finish_round, model, target_items, r, state, t0)
            else:
                state = self._finish_round(model, target_items, r, state, t0)
        return model

    def _prepare_output(self) -> dict | None:
        os.makedirs(self.output_dir, exist_ok=True)
        return self.load_state()

    def _finish_round(self, model: torch.nn.Module, target_items: list, r: int, state: dict, t0: float) -> dict:
        """Label round ``r``, save its checkpoint and the state file; returns the new state."""
        info = self._label_round(model, target_items, r)
        info["checkpoint"] = self._save_checkpoint(model, r)
        info["train_state"] = self._save_train_state(r)
        info["fresh_model"] = self.model_factory is not None and r > 0
        trained = getattr(self.train_fn, "history", None)  # kept in the state, so a resumed run reports every round
        if r > 0 and trained and trained[-1].get("round") == r:
            info["train"] = dict(trained[-1])
        info["seconds"] = round(time.time() - t0, 3)
        state["rounds"][str(r)] = info
        state["completed"] = sorted(set(state["completed"]) | {r})
        self._save_state(state)
        logger.info("pseudo-label round %d done: foreground fraction %.4f", r, info["foreground_fraction"])
        return state
