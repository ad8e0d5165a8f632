"""Pseudo-label-round adaptation of BUDA-Seg (paper 000) and its two baselines, driven by MONAI trainers.

Paper 000 (Li et al., Sec. 3): a model pre-trained on the labelled source domain labels the target
images (round 0); then, for ``T`` iterations, the network is trained on the current pseudo-labels and
"the current predictions of BB" become the pseudo-labels of the next iteration. Three variants share
these rounds, the network, the data and the training budget:

- ``"buda"``: :class:`~monai_uda.networks.variance_head.VarianceUNet` (logits O and variance map V from
  one pass) trained with :class:`~monai_uda.losses.variational_dice.VariationalSamplingDiceLoss`
  (Eq. 1-3, ``K`` samples), by a :class:`~monai_uda.engines.variance_trainer.VarianceSupervisedTrainer`;
- ``"selftrain"``: the same rounds without the variance map, plain squared Dice (Eq. 2 on O; the
  ablation of the paper's Fig. 5), by a MONAI ``SupervisedTrainer``;
- ``"mcdropout"``: Wu et al.'s MC-dropout rectification (:mod:`monai_uda.adaptation.mc_dropout`): the
  network gets dropout, pseudo-labels are the mean of ``T`` stochastic passes (pixels above an
  uncertainty threshold optionally ignored), and training weights the cross-entropy of the MC mean by
  ``exp(-u)``; a ``SupervisedTrainer`` with :class:`~monai_uda.adaptation.mc_dropout.MCDropoutInferer`.

Rounds, atomic per-round pseudo-labels, resume after a crash and the collapse warning are
:class:`~monai_uda.handlers.pseudo_label_rounds.PseudoLabelRounds`'. Target labels are never read: only
``target_training`` images are used. The adapted network is saved as a plain ``UDAUNet`` state dict
(``<ckpt_dir>/model.pt``; the variance head is training-only), atomically.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator, Sequence

import torch
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.engines import SupervisedTrainer
from monai.handlers import StatsHandler, from_engine
from monai.inferers import SimpleInferer, sliding_window_inference
from monai.transforms import Invertd

from monai_uda.adaptation.mc_dropout import (
    MCDropoutInferer,
    UncertaintyRectifiedLoss,
    mc_dropout_mode,
    mc_dropout_uncertainty,
    rectify_pseudo_label,
)
from monai_uda.data.uda_data import UDAData
from monai_uda.engines.variance_trainer import VarianceSupervisedTrainer
from monai_uda.handlers.pseudo_label_rounds import IGNORE_VALUE, STATE_FILE, PseudoLabelRounds
from monai_uda.losses.variational_dice import VariationalSamplingDiceLoss, plain_dice_loss
from monai_uda.networks.unet import UDAUNet
from monai_uda.networks.variance_head import VarianceUNet
from monai_uda.transforms.pipelines import segmentation_transforms
from monai_uda.utils import atomic_write_text

__all__ = ["PseudoLabelAdaptation", "resolve_source_checkpoint", "split_epochs", "ADAPT_METHODS", "ROUND_INITS"]

logger = logging.getLogger(__name__)

#: the variants of :class:`PseudoLabelAdaptation`
ADAPT_METHODS = ("buda", "selftrain", "mcdropout")
#: how each round's model starts: the previous round's (fine-tune), the source model, or random weights
ROUND_INITS = ("finetune", "source", "random")
_SOURCE_MARK = "source_budget.json"


def _atomic_torch_save(obj: Any, path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=directory)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _atomic_json(obj: Any, path: str) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str))


def resolve_source_checkpoint(checkpoint: str | None, out_dir: str, **overrides: Any) -> str:
    """The source model to adapt: ``checkpoint`` if given, else one trained by the ``source_segmentation`` bundle.

    The trained model is cached in ``out_dir/model.pt`` with the overrides it was trained with; it is
    reused while they are unchanged and retrained otherwise. (``monai_uda.bundle.ensure_source_checkpoint``,
    used by the BN bundle, instead trains once at the short demo budget and never retrains.)

    Args:
        checkpoint: path of a ``UDAUNet`` state dict (the source bundle's ``models/model.pt``), or None.
        out_dir: where to train (and cache) a source model when ``checkpoint`` is None.
        overrides: ``source_segmentation/configs/train.json`` overrides (datalist, budget, seed, device...).

    Raises:
        FileNotFoundError: ``checkpoint`` is given but does not exist.
    """
    if checkpoint:
        if not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"source_checkpoint not found: {checkpoint}")
        return str(checkpoint)
    path = os.path.join(out_dir, "model.pt")
    mark = os.path.join(out_dir, _SOURCE_MARK)
    key = json.loads(json.dumps({k: v for k, v in overrides.items()}, default=str, sort_keys=True))
    if os.path.isfile(path) and os.path.isfile(mark):
        with open(mark) as f:
            if json.load(f) == key:
                logger.info("reusing the source model %s", path)
                return path
    from monai_uda.bundle.run import run_bundle

    logger.info("no source_checkpoint given: training a source model with the source_segmentation bundle")
    run_bundle("source_segmentation", "train.json", ckpt_dir=out_dir, output_dir=out_dir, **overrides)
    _atomic_json(key, mark)
    return path


def split_epochs(max_epochs: int, num_rounds: int) -> list[int]:
    """Epochs of rounds ``1..T``: ``max_epochs`` spread as evenly as possible (earlier rounds get the rest).

    Raises:
        ValueError: ``num_rounds`` < 1 or larger than ``max_epochs`` (a round without training).
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}.")
    if max_epochs < num_rounds:
        raise ValueError(f"max_epochs ({max_epochs}) must be >= num_rounds ({num_rounds}): one epoch per round at least.")
    base, rest = divmod(int(max_epochs), int(num_rounds))
    return [base + (1 if r < rest else 0) for r in range(num_rounds)]


class PseudoLabelAdaptation:
    """Pseudo-label rounds from a source model, for BUDA-Seg, its no-variance ablation and MC-dropout.

    Example::

        PseudoLabelAdaptation("A1.json", "source/model.pt", "runs/buda", method="buda", num_rounds=3).run()

    Args:
        datalist: UDA datalist JSON (only ``target_training`` images are used) or a ``UDAData``.
        source_checkpoint: ``UDAUNet`` state dict of the source model (round 0 labels the target with it).
        output_dir: rounds folder (``round_<r>/`` pseudo-labels and checkpoints, ``rounds_state.json``).
        ckpt_dir: where the adapted model is saved (``model.pt``; ``variance_model.pt`` for ``"buda"``).
        method: ``"buda"``, ``"selftrain"`` or ``"mcdropout"``.
        num_rounds: T, training rounds after the round-0 labelling.
        round_init: ``"finetune"`` (continue from the previous round), ``"source"`` (each round restarts
            from the source model) or ``"random"`` (each round trains a freshly initialised network).
        max_epochs: training epochs over all rounds together (split by :func:`split_epochs`), so that the
            budget equals a single training of ``max_epochs``.
        epoch_length: iterations per epoch (None: one pass over the pseudo-labelled data).
        batch_size, num_samples, roi_size: training batch, crops per image and crop size.
        learning_rate: Adam learning rate of every round.
        loss_function: overrides the method's loss (default: ``VariationalSamplingDiceLoss(K)`` for
            ``"buda"``, ``plain_dice_loss()`` for ``"selftrain"``, ``UncertaintyRectifiedLoss()`` for
            ``"mcdropout"``).
        variational_samples: K of Eq. 1-3.
        init_variance: initial value of V when the variance head is attached to the source model.
        mc_passes: stochastic passes of the MC-dropout baseline (training and labelling).
        mc_dropout: dropout probability inserted into the network for ``"mcdropout"``.
        mc_threshold: ``"mcdropout"`` pseudo-label pixels with uncertainty above it are ignored (None: none).
        sw_batch_size: sliding-window batch size when labelling.
        label_roi_size: sliding-window size when labelling (None: the whole image rounded up to a multiple of
            16, each side capped at ``max(max_label_side, roi_size)``: few large windows instead of many crops).
        max_label_side: cap of the automatic labelling window side (None: 256 in 2D, 128 in 3D).
        data_limit: use only the first ``data_limit`` target images.
        collapse_threshold: foreground fraction below which a round is reported as collapsed.
        resume: continue after the last completed round found in ``output_dir``; False starts over.
        device, amp, num_workers, cache_rate, progress: as in the bundles.
        dataset_dir: base folder of relative paths in ``datalist``.
        distributed: multi-GPU (one process per GPU, process group initialised, every rank runs
            :meth:`run`): each round trains a ``DistributedDataParallel`` copy on this rank's
            ``DistributedSampler`` shard of the pseudo-labelled items (``batch_size`` per rank, so the
            global batch is ``W * batch_size``); rank 0 alone labels the target, writes the rounds, the
            adapted model and the summary, the other ranks wait (see ``PseudoLabelRounds``).
    """

    def __init__(
        self,
        datalist: str | UDAData,
        source_checkpoint: str,
        output_dir: str,
        ckpt_dir: str,
        method: str = "buda",
        num_rounds: int = 3,
        round_init: str = "finetune",
        max_epochs: int = 6,
        epoch_length: int | None = None,
        batch_size: int = 4,
        num_samples: int = 2,
        roi_size: Sequence[int] | None = None,
        learning_rate: float = 1e-3,
        loss_function: Callable | None = None,
        variational_samples: int = 4,
        init_variance: float = 0.1,
        mc_passes: int = 4,
        mc_dropout: float = 0.1,
        mc_threshold: float | None = None,
        sw_batch_size: int = 4,
        label_roi_size: Sequence[int] | None = None,
        max_label_side: int | None = None,
        data_limit: int | None = None,
        collapse_threshold: float = 0.01,
        resume: bool = True,
        device: str | torch.device = "cpu",
        amp: bool = False,
        num_workers: int = 0,
        cache_rate: float = 1.0,
        progress: bool = True,
        dataset_dir: str | None = None,
        distributed: bool = False,
    ):
        if method not in ADAPT_METHODS:
            raise ValueError(f"method must be one of {ADAPT_METHODS}, got {method!r}.")
        if round_init not in ROUND_INITS:
            raise ValueError(f"round_init must be one of {ROUND_INITS}, got {round_init!r}.")
        if not source_checkpoint or not os.path.isfile(source_checkpoint):
            raise FileNotFoundError(f"source_checkpoint not found: {source_checkpoint}")
        self.uda = datalist if isinstance(datalist, UDAData) else UDAData(datalist, base_dir=dataset_dir, deep=False)
        self.source_checkpoint = str(source_checkpoint)
        self.output_dir = os.path.abspath(output_dir)
        self.ckpt_dir = os.path.abspath(ckpt_dir)
        self.method = method
        self.num_rounds = int(num_rounds)
        self.round_init = round_init
        self.epochs = split_epochs(int(max_epochs), self.num_rounds)
        self.epoch_length = None if epoch_length is None else int(epoch_length)
        self.batch_size = int(batch_size)
        self.num_samples = int(num_samples)
        dims = self.uda.spatial_dims
        self.roi_size = list(roi_size) if roi_size is not None else ([128, 128] if dims == 2 else [64, 64, 64])
        if len(self.roi_size) != dims or any(int(s) % 16 for s in self.roi_size):
            raise ValueError(f"roi_size {self.roi_size} must have {dims} sides, each divisible by 16 (UDAUNet).")
        self.learning_rate = float(learning_rate)
        self.variational_samples = int(variational_samples)
        self.init_variance = float(init_variance)
        self.mc_passes = int(mc_passes)
        self.mc_dropout = float(mc_dropout)
        self.mc_threshold = mc_threshold
        if method == "mcdropout" and not 0 < self.mc_dropout < 1:
            raise ValueError(f"mc_dropout must be in (0, 1) for the MC-dropout baseline, got {mc_dropout}.")
        self.loss_function = loss_function if loss_function is not None else self._default_loss()
        self.sw_batch_size = int(sw_batch_size)
        self.label_roi_size = None if label_roi_size is None else [int(v) for v in label_roi_size]
        if self.label_roi_size is not None and (len(self.label_roi_size) != dims or any(v % 16 for v in self.label_roi_size)):
            raise ValueError(f"label_roi_size {label_roi_size} must have {dims} sides, each divisible by 16 (UDAUNet).")
        self.max_label_side = int(max_label_side) if max_label_side else (256 if dims == 2 else 128)
        self.data_limit = data_limit
        self.collapse_threshold = float(collapse_threshold)
        self.resume = bool(resume)
        self.device = torch.device(device)
        self.amp = bool(amp)
        self.num_workers = int(num_workers)
        self.cache_rate = float(cache_rate)
        self.progress = bool(progress)
        self.distributed = bool(distributed)  # without a process group: one rank, i.e. the single-process run
        self.history: list[dict[str, Any]] = []
        self._last_uncertainty: torch.Tensor | None = None
        self._source_state = self._load_source_state()

    # ------------------------------------------------------------------------------------ networks
    def _default_loss(self) -> Callable:
        if self.method == "buda":
            return VariationalSamplingDiceLoss(num_samples=self.variational_samples, ignore_index=IGNORE_VALUE)
        if self.method == "selftrain":
            return plain_dice_loss(ignore_index=IGNORE_VALUE)
        return UncertaintyRectifiedLoss(ignore_index=IGNORE_VALUE)

    def _load_source_state(self) -> dict:
        state = torch.load(self.source_checkpoint, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]  # a MONAI CheckpointSaver dict
        probe = self._base_network()
        try:
            probe.load_state_dict(state)
        except RuntimeError as e:
            raise ValueError(
                f"source_checkpoint {self.source_checkpoint} is not a UDAUNet({self.uda.spatial_dims}D, "
                f"in_channels={self.uda.in_channels}, classes={self.uda.num_classes}) state dict: {e}"
            ) from e
        return state

    def _base_network(self) -> UDAUNet:
        dropout = self.mc_dropout if self.method == "mcdropout" else 0.0
        return UDAUNet(
            spatial_dims=self.uda.spatial_dims,
            in_channels=self.uda.in_channels,
            out_channels=self.uda.num_classes,
            dropout=dropout,
        )

    def build_network(self, from_source: bool = True) -> torch.nn.Module:
        """The training network of the method (on ``device``), with the source weights unless ``from_source`` is False."""
        net = self._base_network()
        if from_source:
            net.load_state_dict(self._source_state)
        if self.method == "buda":
            net = VarianceUNet(net, init_variance=self.init_variance)
        return net.to(self.device)

    @staticmethod
    def segmentation_network(model: torch.nn.Module) -> torch.nn.Module:
        """The plain segmentation network inside ``model`` (drops the training-only variance head)."""
        return model.network if isinstance(model, VarianceUNet) else model

    # ---------------------------------------------------------------------------------- labelling
    def _target_transform(self):
        return segmentation_transforms(
            "target", spatial_dims=self.uda.spatial_dims, in_channels=self.uda.in_channels, pixdim=self.uda.pixdim
        )

    def label_window(self, spatial_shape: Sequence[int]) -> list[int]:
        """Sliding-window size used to label an image of ``spatial_shape``."""
        if self.label_roi_size is not None:
            return list(self.label_roi_size)
        return [
            min(-(-int(n) // 16) * 16, max(self.max_label_side // 16 * 16, int(r)))
            for n, r in zip(spatial_shape, self.roi_size)
        ]

    def predict(self, model: torch.nn.Module, items: Sequence[dict]) -> Iterator[tuple[dict, torch.Tensor]]:
        """``predict_fn`` of the rounds: softmax probabilities ``(C, *spatial)`` in each item's own array space."""
        preproc = self._target_transform()
        net = self.segmentation_network(model)

        def window_probs(x: torch.Tensor) -> torch.Tensor:
            roi = self.label_window(x.shape[2:])
            logits = sliding_window_inference(x, roi, self.sw_batch_size, net, overlap=0.25)
            return torch.softmax(torch.as_tensor(logits), dim=1)

        for item in items:
            data = preproc(dict(item))
            image = data["image"]
            x = torch.as_tensor(image).unsqueeze(0).to(self.device)
            keys = ["pred"]
            if self.method == "mcdropout":
                with mc_dropout_mode(net):
                    probs, unc = mc_dropout_uncertainty(torch.stack([window_probs(x) for _ in range(self.mc_passes)]))
                data["uncertainty"] = MetaTensor(unc[0].float().cpu(), meta=dict(image.meta),
                                                 applied_operations=list(image.applied_operations))
                keys.append("uncertainty")
            else:
                net.eval()
                probs = window_probs(x)
            data["pred"] = MetaTensor(probs[0].float().cpu(), meta=dict(image.meta),
                                      applied_operations=list(image.applied_operations))
            if image.applied_operations:  # 3D: orientation / resampling back to the item's array space
                data = Invertd(keys=keys, transform=preproc, orig_keys=["image"] * len(keys), nearest_interp=False)(data)
            self._last_uncertainty = data.get("uncertainty")
            yield item, data["pred"]

    def select(self, probs: torch.Tensor, round: int) -> torch.Tensor:
        """``select_fn``: argmax; for ``"mcdropout"``, pixels of uncertainty > ``mc_threshold`` get 255."""
        probs = torch.as_tensor(probs)
        if self.method != "mcdropout" or self.mc_threshold is None:
            return probs.argmax(0)
        unc = torch.as_tensor(self._last_uncertainty)
        return rectify_pseudo_label(probs[None], unc[None], self.mc_threshold, IGNORE_VALUE)[0, 0]

    # ----------------------------------------------------------------------------------- training
    def train_round(self, model: torch.nn.Module, datalist: list[dict], round: int) -> torch.nn.Module:
        """``train_fn`` of the rounds: a MONAI ``SupervisedTrainer`` on the previous round's pseudo-labels."""
        transform = segmentation_transforms(
            "train",
            spatial_dims=self.uda.spatial_dims,
            in_channels=self.uda.in_channels,
            pixdim=self.uda.pixdim,
            roi_size=self.roi_size,
            num_samples=self.num_samples,
        )
        dataset = CacheDataset(
            data=datalist, transform=transform, cache_rate=self.cache_rate, num_workers=self.num_workers, progress=False
        )
        model = model.to(self.device)
        network, rank0 = model, True
        if self.distributed:
            from monai.data import DistributedSampler

            from monai_uda.distributed import get_rank, get_world_size, is_rank0, wrap_ddp

            sampler = DistributedSampler(dataset, shuffle=True, even_divisible=True, seed=int(round),
                                         num_replicas=get_world_size(), rank=get_rank())
            loader = DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)
            network, rank0 = wrap_ddp(model, self.device), is_rank0()
        else:
            loader = DataLoader(dataset, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.learning_rate)
        trainer_cls = VarianceSupervisedTrainer if self.method == "buda" else SupervisedTrainer
        inferer = MCDropoutInferer(self.mc_passes) if self.method == "mcdropout" else SimpleInferer()
        losses: list[float] = []
        handlers = [
            StatsHandler(
                tag_name=f"round{round}_loss",
                output_transform=from_engine(["loss"], first=True),
                iteration_log=False,
                name=__name__,
            )
        ] if rank0 else []
        trainer = trainer_cls(
            device=self.device,
            max_epochs=self.epochs[round - 1],
            train_data_loader=loader,
            network=network,
            optimizer=optimizer,
            loss_function=self.loss_function,
            inferer=inferer,
            epoch_length=self.epoch_length,
            train_handlers=handlers,
            amp=self.amp,
            decollate=False,
        )
        from ignite.engine import Events

        @trainer.on(Events.ITERATION_COMPLETED)
        def _record(engine):
            value = float(torch.as_tensor(engine.state.output["loss"]).detach())
            if value != value:
                raise FloatingPointError(f"{self.method} loss is NaN in round {round}, iteration {engine.state.iteration}.")
            losses.append(value)

        if self.progress and rank0:
            from ignite.handlers import ProgressBar

            ProgressBar(desc=f"{self.method} round {round}", persist=False).attach(trainer)
        trainer.run()
        last = losses[-(self.epoch_length or len(loader)) :] if losses else []
        self.history.append(
            {"round": round, "epochs": self.epochs[round - 1], "iterations": trainer.state.iteration,
             "train_loss": sum(last) / len(last) if last else float("nan")}
        )
        return model

    # ---------------------------------------------------------------------------------------- run
    def rounds(self) -> PseudoLabelRounds:
        """The round driver (labelling, atomic files, resume, collapse warning)."""
        factory = None
        if self.round_init != "finetune":
            factory = lambda: self.build_network(from_source=self.round_init == "source")  # noqa: E731
        return PseudoLabelRounds(
            num_rounds=self.num_rounds,
            output_dir=self.output_dir,
            predict_fn=self.predict,
            select_fn=self.select,
            train_fn=self.train_round,
            model_factory=factory,
            collapse_threshold=self.collapse_threshold,
            progress=self.progress,
            distributed=self.distributed,
        )

    def _clear_rounds(self) -> None:
        if os.path.isdir(self.output_dir):
            for name in os.listdir(self.output_dir):
                path = os.path.join(self.output_dir, name)
                if name == STATE_FILE:
                    os.remove(path)
                elif name.startswith("round_") and os.path.isdir(path):
                    shutil.rmtree(path)

    def run(self) -> str:
        """Run (or resume) the rounds; save and return ``<ckpt_dir>/model.pt`` (a plain ``UDAUNet`` state dict)."""
        t0 = time.time()
        if not self.resume:
            if self.distributed:
                from monai_uda.distributed import on_rank0

                on_rank0(self._clear_rounds)
            else:
                self._clear_rounds()
        items = self.uda.split("target_training", limit=self.data_limit)
        driver = self.rounds()
        model = driver.run(self.build_network(), items)
        if self.distributed:
            from monai_uda.distributed import on_rank0

            return on_rank0(self._save_outputs, model, driver, t0)
        return self._save_outputs(model, driver, t0)

    def _save_outputs(self, model: torch.nn.Module, driver: PseudoLabelRounds, t0: float) -> str:
        seg = self.segmentation_network(model)
        path = os.path.join(self.ckpt_dir, "model.pt")
        _atomic_torch_save({k: v.detach().cpu() for k, v in seg.state_dict().items()}, path)
        if isinstance(model, VarianceUNet):
            _atomic_torch_save(
                {k: v.detach().cpu() for k, v in model.state_dict().items()}, os.path.join(self.ckpt_dir, "variance_model.pt")
            )
        state = driver.load_state() or {}
        rounds = {int(r): v for r, v in state.get("rounds", {}).items()}
        summary = {
            "method": self.method,
            "num_rounds": self.num_rounds,
            "round_init": self.round_init,
            "epochs_per_round": self.epochs,
            "source_checkpoint": self.source_checkpoint,
            "adapt_seconds": round(time.time() - t0, 3),
            "foreground_fraction": {r: v.get("foreground_fraction") for r, v in sorted(rounds.items())},
            "collapsed_rounds": [r for r, v in sorted(rounds.items()) if v.get("collapsed")],
            "train_history": self.history,
        }
        _atomic_json(summary, os.path.join(self.ckpt_dir, "adapt_summary.json"))
        self.summary = summary
        return path
