"""Pseudo-label rounds (iterative self-training), shared by BUDA-Seg, self-training/CBST and PAST top-q.

Round 0 labels the target images with the source model; each round ``r = 1..T`` trains on the
pseudo-labels of round ``r - 1`` (fine-tuning the current model, or a fresh one from ``model_factory``)
and relabels the target with the new model (paper 000, Sec. 3: "we use the current predictions of BB as
the new pseudo labels for the next training iteration. We repeat a total of T iterations").

On disk, under ``output_dir``::

    round_<r>/<name>.nii.gz          pseudo-label of each target item (uint8; 255 = ignored pixel)
    round_<r>/<name>_weight.nii.gz   optional float32 per-pixel weight (when select_fn returns one)
    round_<r>/model.pt               model state_dict after round r (round 0: the source model)
    rounds_state.json                completed rounds, their files, foreground fraction, collapse flag

Every file is written atomically (temporary file + ``os.replace``) and the state file is updated only
after a round's labels and checkpoint exist, so a crash leaves the last completed round intact and
:meth:`PseudoLabelRounds.run` resumes after it without redoing it.

Each method plugs in through callables:

- ``predict_fn(model, items) -> iterable of (item, probs)``: ``probs`` is ``(C, *spatial)`` for one item,
  in the item's array space (2D or 3D). The driver calls it in no-grad context and leaves the model's
  mode to it.
- ``select_fn(probs, round) -> label`` or ``(label, extra)``: ``label`` ``(*spatial)`` integer classes,
  255 (:data:`IGNORE_VALUE`) marking unlabelled pixels (e.g. top-q or CBST dropping low-confidence
  pixels); ``extra`` is a *bool keep-mask* (False pixels are set to 255) or a *float weight map* (saved
  next to the label, key ``"weight"`` of the datalist). If ``select_fn`` has a ``fit(probs_iter, round)``
  method (class-wise thresholds over the whole target set, as CBST needs), it is called first on a
  separate prediction pass.
- ``train_fn(model, pseudo_datalist, round) -> model``: ``pseudo_datalist`` is the target items with
  ``"label"`` (and ``"weight"``) paths of the previous round's pseudo-labels and ``"pseudo_label_round"``.

Rounds wrap whole trainings, so the driver is a plain object rather than an ignite event handler;
``train_fn`` is free to build and run an ignite/MONAI trainer.

Multi-GPU (``distributed=True``, every rank runs :meth:`PseudoLabelRounds.run`): ``train_fn`` runs on every
rank (it is expected to train a DDP model on its shard of the pseudo-labelled items); labelling, the
per-round checkpoint and the state file are done by rank 0 alone with its (DDP-synchronised) model, and
the other ranks wait for it and receive the new state before the next round reads its pseudo-labels.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from typing import Any, Callable, Iterable, Sequence

import nibabel as nib
import numpy as np
import torch
from tqdm import tqdm
from monai_uda.utils import atomic_write

__all__ = ["PseudoLabelRounds", "argmax_select", "IGNORE_VALUE", "STATE_FILE"]

#: pseudo-label value of unlabelled / ignored pixels
IGNORE_VALUE = 255
#: name of the JSON state file in ``output_dir``
STATE_FILE = "rounds_state.json"

logger = logging.getLogger(__name__)

_EXTENSIONS = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy", ".npz")


def argmax_select(probs: torch.Tensor, round: int) -> torch.Tensor:
    """Default ``select_fn``: the hard pseudo-label ``argmax_c probs`` (plain self-training)."""
    return torch.as_tensor(probs).argmax(0)


def _atomic_write(path: str, write: Callable[[str], None], suffix: str) -> None:
    atomic_write(path, write)  # the suffix is taken from ``path``


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


class PseudoLabelRounds:
    """Resumable pseudo-label rounds driver (see the module docstring for the plug-in callables).

    Args:
        num_rounds: T, the number of train-and-relabel rounds after the round-0 labelling.
        output_dir: where rounds, checkpoints and the state file are written.
        predict_fn: ``(model, items) -> iterable of (item, probs (C, *spatial))``.
        select_fn: ``(probs, round) -> label`` or ``(label, keep-mask | weight)``; :func:`argmax_select` if None.
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
        predict_fn: Callable[[torch.nn.Module, Sequence[Any]], Iterable[tuple[Any, torch.Tensor]]],
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
        self.select_fn = argmax_select if select_fn is None else select_fn
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
        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(state, f, indent=2)

        _atomic_write(self.state_path, write, ".json")

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
                label = np.where(extra_t.numpy(), label, IGNORE_VALUE)
            else:
                weight = extra_t.float().numpy()
        return label, weight

    def _label_round(self, model: torch.nn.Module, target_items: Sequence[Any], r: int) -> dict:
        round_dir = os.path.join(self.output_dir, f"round_{r}")
        os.makedirs(round_dir, exist_ok=True)
        if hasattr(self.select_fn, "fit"):
            with torch.no_grad():
                self.select_fn.fit((p for _, p in self.predict_fn(model, target_items)), r)
        index_of = {id(it): i for i, it in enumerate(target_items)}
        records, used, n_fg, n_valid = [], set(), 0, 0
        with torch.no_grad():
            stream = self.predict_fn(model, target_items)
            for count, (item, probs) in enumerate(
                tqdm(stream, total=len(target_items), desc=f"pseudo-labels round {r}", disable=not self.progress)
            ):
                if probs.ndim not in (3, 4):
                    raise ValueError(
                        f"predict_fn must yield probs of shape (C, *spatial) 2D/3D, got {tuple(probs.shape)}."
                    )
                if not bool(torch.isfinite(torch.as_tensor(probs)).all()):
                    raise ValueError(f"predict_fn yielded non-finite probabilities for item {count} in round {r}.")
                index = index_of.get(id(item), count)
                label, weight = self._split_selection(self.select_fn(probs, r))
                if label.shape != tuple(probs.shape[1:]):
                    raise ValueError(
                        f"select_fn label shape {label.shape} != probs spatial shape {tuple(probs.shape[1:])}."
                    )
                num_classes = probs.shape[0]
                bad = (label < 0) | ((label >= num_classes) & (label != IGNORE_VALUE))
                if bad.any():
                    raise ValueError(f"select_fn returned labels outside [0, {num_classes}) and != {IGNORE_VALUE}.")
                valid = label != IGNORE_VALUE
                n_valid += int(valid.sum())
                n_fg += int((valid & (label != self.background)).sum())
                name = _item_name(item, f"item_{index:05d}")
                while name in used:
                    name = f"{name}_{index:05d}"
                used.add(name)
                affine = _item_affine(item, probs, label.ndim)
                dtype = np.uint8 if label.max(initial=0) <= 255 else np.int16
                rel = f"round_{r}/{name}.nii.gz"
                _atomic_write(
                    os.path.join(self.output_dir, rel),
                    lambda tmp, a=label.astype(dtype), af=affine: nib.save(nib.Nifti1Image(a, af), tmp),
                    ".nii.gz",
                )
                rec = {"index": index, "label": rel, "weight": None}
                if weight is not None:
                    wrel = f"round_{r}/{name}_weight.nii.gz"
                    _atomic_write(
                        os.path.join(self.output_dir, wrel),
                        lambda tmp, a=weight.astype(np.float32), af=affine: nib.save(nib.Nifti1Image(a, af), tmp),
                        ".nii.gz",
                    )
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
        _atomic_write(os.path.join(self.output_dir, rel), lambda tmp: torch.save(model.state_dict(), tmp), ".pt")
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
        info["fresh_model"] = self.model_factory is not None and r > 0
        info["seconds"] = round(time.time() - t0, 3)
        state["rounds"][str(r)] = info
        state["completed"] = sorted(set(state["completed"]) | {r})
        self._save_state(state)
        logger.info("pseudo-label round %d done: foreground fraction %.4f", r, info["foreground_fraction"])
        return state
