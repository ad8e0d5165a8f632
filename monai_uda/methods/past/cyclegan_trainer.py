"""Training and applying PAST's pixel-alignment network (Dong et al., Algorithm 1 lines 2-3).

- :class:`CycleGANTrainer`: a ``monai.engines.Trainer`` whose ``_iteration`` performs one CycleGAN
  step on an unpaired batch ``{"source": x_s, "target": x_t}``: first the two generators (adversarial +
  cycle + identity, :class:`monai_uda.methods.past.cyclegan_losses.CycleGANLoss`), then the two discriminators,
  in the style of MONAI's ``GanTrainer``/``AdversarialTrainer`` (which handle one generator and one
  discriminator only). Handlers (``StatsHandler``, ``CheckpointSaver``, ...) attach as usual.
- :class:`UnpairedDataset`: pairs each source item with a random target item.
- :func:`atomic_checkpoint_saver`: a MONAI ``CheckpointSaver`` whose files are written atomically.
- :func:`translate_volume`: translate a 3D NIfTI slice by slice (MONAI ``SliceInferer``) and restack
  the slices, keeping the affine and header; or a 2D PNG/TIFF patch. Outputs are written atomically.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable, Sequence

import numpy as np
import torch
from monai.engines import Trainer
from monai.engines.utils import GanKeys, IterationEvents
from monai.handlers import CheckpointSaver
from monai.inferers import SimpleInferer, SliceInferer
from monai.utils import CommonKeys
from torch.utils.data import Dataset

from monai_uda.methods.past.cyclegan_losses import CycleGANLoss
from monai_uda.utils import atomic_write

__all__ = [
    "CycleGANKeys",
    "CycleGANTrainer",
    "ImagePool",
    "UnpairedDataset",
    "atomic_checkpoint_saver",
    "translate_padded",
    "translate_volume",
]


class CycleGANKeys:
    """Keys of ``engine.state.output`` after a :class:`CycleGANTrainer` iteration."""

    SOURCE = "source"
    TARGET = "target"
    FAKE_T = "fake_t"  # G_st(x_s): source translated to the target modality
    FAKE_S = "fake_s"  # G_ts(x_t)
    GLOSS = GanKeys.GLOSS
    DLOSS = GanKeys.DLOSS
    ADV = "adv_loss"
    CYCLE = "cycle_loss"
    IDENTITY = "identity_loss"


class ImagePool:
    """History buffer of generated images (Shrivastava et al. 2017, used by CycleGAN): the discriminator
    sees, with probability 1/2 per image, an older fake instead of the newest one.

    Args:
        pool_size: images kept; 0 disables the buffer (the newest fakes are returned).
    """

    def __init__(self, pool_size: int = 50) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size must be >= 0, got {pool_size}.")
        self.pool_size = pool_size
        self.images: list[torch.Tensor] = []

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool_size == 0:
            return images.detach()
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.pool_size:
                self.images.append(img)
                out.append(img)
            elif random.random() < 0.5:
                i = random.randrange(self.pool_size)
                out.append(self.images[i].clone())
                self.images[i] = img
            else:
                out.append(img)
        return torch.cat(out, 0)


class UnpairedDataset(Dataset):
    """Unpaired source/target items: item ``i`` is ``{"source": source[i], "target": target[j]}``
    with ``j`` drawn at random (deterministic given ``seed`` and the epoch's call order).

    Args:
        source: source-domain items (tensors, or anything ``transform_source`` accepts).
        target: target-domain items.
        transform_source: applied to each source item (e.g. a MONAI ``Compose``).
        transform_target: applied to each target item.
        seed: random seed of the target draws.
    """

    def __init__(
        self,
        source: Sequence,
        target: Sequence,
        transform_source: Callable | None = None,
        transform_target: Callable | None = None,
        seed: int = 0,
    ) -> None:
        if len(source) == 0:
            raise ValueError("UnpairedDataset: `source` is empty.")
        if len(target) == 0:
            raise ValueError("UnpairedDataset: `target` is empty.")
        self.source, self.target = source, target
        self.transform_source, self.transform_target = transform_source, transform_target
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.source[i]
        t = self.target[int(self.rng.integers(len(self.target)))]
        if self.transform_source is not None:
            s = self.transform_source(s)
        if self.transform_target is not None:
            t = self.transform_target(t)
        return {CycleGANKeys.SOURCE: s, CycleGANKeys.TARGET: t}


def _unpaired_prepare_batch(source_key: str, target_key: str) -> Callable:
    def prepare(batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any):
        if not isinstance(batchdata, dict):
            raise TypeError(f"CycleGANTrainer expects dict batches, got {type(batchdata).__name__}.")
        for k in (source_key, target_key):
            if k not in batchdata:
                raise KeyError(f"CycleGANTrainer: batch has no key {k!r} (keys: {sorted(batchdata)}).")
        xs = [
            torch.as_tensor(batchdata[k]).to(device=device, non_blocking=non_blocking, **kwargs)
            for k in (source_key, target_key)
        ]
        for k, x in zip((source_key, target_key), xs):
            if not torch.isfinite(x).all():
                raise ValueError(f"CycleGANTrainer: batch[{k!r}] contains NaN or Inf.")
        return xs[0], xs[1]

    return prepare


def _local(net: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (others unchanged)."""
    if isinstance(net, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return net.module
    return net


class CycleGANTrainer(Trainer):
    """CycleGAN training workflow on unpaired batches (``monai.engines.Trainer`` subclass).

    Each iteration (``_iteration``):

    1. generators: ``L_G = lambda_adv L_adv^G + lambda_cycle L_cyc + lambda_identity L_id`` backpropagated
       into ``g_st`` and ``g_ts`` (discriminators frozen), one ``g_optimizer`` step;
    2. discriminators: ``L_D = L_adv^D(d_s; x_s, G_ts(x_t)) + L_adv^D(d_t; x_t, G_st(x_s))`` on detached
       fakes (through :class:`ImagePool`), ``d_train_steps`` ``d_optimizer`` steps.

    ``engine.state.output`` holds :class:`CycleGANKeys` entries; ``CommonKeys.LOSS`` is the generator loss
    so ``StatsHandler(output_transform=from_engine(["loss"], first=True))`` works unchanged.

    Args:
        device: torch device.
        max_epochs: epochs.
        train_data_loader: yields dicts with ``source_key`` and ``target_key`` batches ``(B, C, *spatial)``.
        g_st: generator source -> target.
        g_ts: generator target -> source.
        d_s: discriminator of the source domain.
        d_t: discriminator of the target domain.
        g_optimizer: optimiser over both generators' parameters.
        d_optimizer: optimiser over both discriminators' parameters.
        loss_function: a :class:`CycleGANLoss` (default weights if None).
        epoch_length: iterations per epoch (default: ``len(train_data_loader)``).
        source_key: batch key of the source images.
        target_key: batch key of the target images.
        pool_size: size of the fake-image history buffers (0: none).
        d_train_steps: discriminator updates per iteration.
        g_inferer: inferer running the generators (default ``SimpleInferer``).
        d_inferer: inferer running the discriminators.
        train_handlers: ignite/MONAI handlers with an ``attach`` method.
        optim_set_to_none: ``zero_grad(set_to_none=...)``.
        kwargs: passed to ``monai.engines.Workflow`` (``non_blocking``, ``iteration_update``, ``to_kwargs``...).
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Any,
        g_st: torch.nn.Module,
        g_ts: torch.nn.Module,
        d_s: torch.nn.Module,
        d_t: torch.nn.Module,
        g_optimizer: torch.optim.Optimizer,
        d_optimizer: torch.optim.Optimizer,
        loss_function: CycleGANLoss | None = None,
        epoch_length: int | None = None,
        source_key: str = CycleGANKeys.SOURCE,
        target_key: str = CycleGANKeys.TARGET,
        pool_size: int = 50,
        d_train_steps: int = 1,
        g_inferer: Any = None,
        d_inferer: Any = None,
        train_handlers: Sequence | None = None,
        optim_set_to_none: bool = False,
        **kwargs: Any,
    ) -> None:
        if d_train_steps < 1:
            raise ValueError(f"d_train_steps must be >= 1, got {d_train_steps}.")
        kwargs.setdefault("decollate", False)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            prepare_batch=_unpaired_prepare_batch(source_key, target_key),
            handlers=train_handlers,
            **kwargs,
        )
        self.g_st, self.g_ts, self.d_s, self.d_t = g_st, g_ts, d_s, d_t
        self.g_optimizer, self.d_optimizer = g_optimizer, d_optimizer
        self.loss_function = CycleGANLoss() if loss_function is None else loss_function
        self.pool_s, self.pool_t = ImagePool(pool_size), ImagePool(pool_size)
        self.d_train_steps = d_train_steps
        self.g_inferer = SimpleInferer() if g_inferer is None else g_inferer
        self.d_inferer = SimpleInferer() if d_inferer is None else d_inferer
        self.optim_set_to_none = optim_set_to_none

    def _iteration(self, engine: CycleGANTrainer, batchdata: dict) -> dict[str, Any]:  # type: ignore[override]
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        real_s, real_t = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        out: dict[str, Any] = {CycleGANKeys.SOURCE: real_s, CycleGANKeys.TARGET: real_t}
        engine.state.output = out

        def g(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x: engine.g_inferer(x, net)

        def d(net: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda x: engine.d_inferer(x, net)

        # 1) generators, discriminators frozen. Under multi-GPU (DDP-wrapped networks) the frozen
        # discriminators run as their local replicas: they get no gradient here, and a DDP forward would
        # wait for one (their gradients are synchronised in step 2).
        for net in (engine.g_st, engine.g_ts, engine.d_s, engine.d_t):
            net.train()
        for net in (engine.d_s, engine.d_t):
            net.requires_grad_(False)
        engine.g_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        gl = engine.loss_function.generator_loss(
            g(engine.g_st), g(engine.g_ts), d(_local(engine.d_s)), d(_local(engine.d_t)), real_s, real_t
        )
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        gl["loss"].backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.g_optimizer.step()
        for net in (engine.d_s, engine.d_t):
            net.requires_grad_(True)

        # 2) discriminators on detached (pooled) fakes
        fake_s = engine.pool_s.query(gl["fake_s"])
        fake_t = engine.pool_t.query(gl["fake_t"])
        d_total = 0.0
        for _ in range(engine.d_train_steps):
            engine.d_optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
            dloss = engine.loss_function.discriminator_loss(
                d(engine.d_s), real_s, fake_s
            ) + engine.loss_function.discriminator_loss(d(engine.d_t), real_t, fake_t)
            dloss.backward()
            engine.d_optimizer.step()
            d_total += dloss.item()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)

        out.update(
            {
                CycleGANKeys.FAKE_T: gl["fake_t"].detach(),
                CycleGANKeys.FAKE_S: gl["fake_s"].detach(),
                CycleGANKeys.GLOSS: gl["loss"].item(),
                CycleGANKeys.DLOSS: d_total / engine.d_train_steps,
                CycleGANKeys.ADV: gl["adv"].item(),
                CycleGANKeys.CYCLE: gl["cycle"].item(),
                CycleGANKeys.IDENTITY: gl["identity"].detach().item(),
                CommonKeys.LOSS: gl["loss"].item(),
            }
        )
        return out


def atomic_checkpoint_saver(save_dir: str, save_dict: dict, **kwargs: Any) -> CheckpointSaver:
    """A MONAI ``CheckpointSaver`` whose checkpoint files are written atomically (temp file + ``os.replace``).

    MONAI 1.6's ``CheckpointSaver`` builds ignite ``DiskSaver(atomic=False)``; this switches its disk
    savers to ignite's atomic mode (which also restores group/other read permission).

    Args:
        save_dir: checkpoint folder.
        save_dict: objects to save, e.g. ``{"g_st": ..., "g_ts": ..., "d_s": ..., "d_t": ..., "g_opt": ...}``.
        kwargs: ``CheckpointSaver`` arguments (``save_final``, ``save_interval``, ``n_saved``, ``epoch_level``...).
    """
    from monai_uda.handlers.atomic_checkpoint_saver import AtomicCheckpointSaver

    return AtomicCheckpointSaver(save_dir=save_dir, save_dict=save_dict, **kwargs)


# ---------------------------------------------------------------------------------------------- translation


def _zscore(x: np.ndarray, nonzero: bool) -> tuple[np.ndarray, float, float]:
    vals = x[x != 0] if nonzero and np.any(x != 0) else x
    mean, std = float(vals.mean()), float(vals.std())
    std = std if std > 0 else 1.0
    y = (x - mean) / std
    if nonzero:
        y = np.where(x != 0, y, 0.0)
    return y.astype(np.float32), mean, std


def _divisible(generator: torch.nn.Module, divisible: int | None) -> int:
    if divisible is not None:
        return int(divisible)
    n_down = getattr(generator, "n_down", None)
    return 2 ** int(n_down) if n_down is not None else 1


def translate_padded(generator: torch.nn.Module, x: torch.Tensor, divisible: int | None = None) -> torch.Tensor:
    """``x`` ``(B, C, H, W)`` through a 2D generator: padded (replicate) to a multiple of ``divisible`` (default
    ``2**generator.n_down``), as the generator's downsampling needs, and cropped back to ``H x W``."""
    k = _divisible(generator, divisible)
    h, w = x.shape[-2:]
    if k > 1 and (h % k or w % k):
        x = torch.nn.functional.pad(x, (0, (-w) % k, 0, (-h) % k), mode="replicate")
    return generator(x)[..., :h, :w]


@torch.no_grad()
def translate_volume(
    generator: torch.nn.Module,
    nifti_in: str,
    nifti_out: str,
    axis: int = 2,
    device: str | torch.device = "cpu",
    sw_batch_size: int = 8,
    normalize: bool = True,
    nonzero: bool | None = None,
    divisible: int | None = None,
    progress: bool = False,
    output_stats: tuple[float, float] | None = None,
) -> str:
    """Translate an image with a 2D generator, slice by slice for 3D volumes, and write it atomically.

    3D NIfTI (``.nii``/``.nii.gz``; a 2D NIfTI is one slice): the slices along ``axis`` go through ``generator`` (MONAI
    ``SliceInferer``, each slice padded to a size divisible by ``divisible``) and are restacked; the
    output keeps the input's shape, affine and header (spacing, orientation), as float32.
    2D PNG/TIFF/JPEG: the image goes through ``generator`` once and is written with the input's dtype
    (clipped to its range); RGB inputs need a 3-channel generator.

    Args:
        generator: 2D image-to-image network ``(B, C, H, W) -> (B, C, H, W)`` (e.g. ``CycleGAN.g_st``).
        nifti_in: input file.
        nifti_out: output file (folders are created; an existing file is replaced atomically).
        axis: array axis of the NIfTI slices (2: axial slices of an RAS volume, as the paper).
        device: where the generator runs.
        sw_batch_size: slices per forward pass.
        normalize: z-score the input before the generator (as MONAI's ``NormalizeIntensity``) and map the
            output from z-units to an intensity scale: ``output_stats`` if given, else the input's own mean and std.
            Either is an affine map, which the segmentation pipeline's z-score removes again.
        nonzero: z-score over non-zero voxels only (default: True for 3D, False for 2D images and 2D NIfTI,
            as ``monai_uda.transforms.segmentation_transforms``); background
            (zero) voxels then stay zero in the output.
        divisible: slice sizes are padded to a multiple of it (default ``2**generator.n_down``).
        progress: tqdm bar over the slices.
        output_stats: ``(mean, std)`` of the output scale, e.g. the target images'
            (:func:`monai_uda.methods.past.past.target_intensity_stats`); None: the input's.

    Returns:
        ``nifti_out``.
    """
    if not os.path.isfile(nifti_in):
        raise FileNotFoundError(f"translate_volume: nifti_in {nifti_in!r} does not exist.")
    name = os.path.basename(nifti_in).lower()
    generator = generator.to(device).eval()
    k = _divisible(generator, divisible)
    if name.endswith((".nii", ".nii.gz")):
        return _translate_nifti(
            generator, nifti_in, nifti_out, axis, device, sw_batch_size, normalize, nonzero, k, progress, output_stats
        )
    if name.endswith((".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")):
        return _translate_2d(generator, nifti_in, nifti_out, device, normalize, bool(nonzero), k, output_stats)
    raise ValueError(f"translate_volume: unsupported file type of nifti_in {nifti_in!r} (NIfTI, PNG, TIFF, JPEG).")


def _translate_nifti(
    generator, path_in, path_out, axis, device, sw_batch_size, normalize, nonzero, k, progress, output_stats=None
) -> str:
    import nibabel as nib

    img = nib.load(path_in)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    is_2d = data.ndim == 2
    if is_2d:  # a 2D NIfTI slice: one slice along a new last axis
        data, axis = data[..., None], 2
    if data.ndim != 3:
        raise ValueError(f"translate_volume: {path_in!r} must be a 2D slice or a 3D volume, got shape {img.shape}.")
    if axis not in (0, 1, 2):
        raise ValueError(f"translate_volume: axis must be 0, 1 or 2, got {axis}.")
    if not np.isfinite(data).all():
        raise ValueError(f"translate_volume: {path_in!r} contains NaN or Inf.")
    nz = (not is_2d) if nonzero is None else nonzero
    x, mean, std = _zscore(data, nz) if normalize else (data, 0.0, 1.0)
    in_ch = getattr(generator, "in_channels", 1)
    if in_ch != 1:
        raise ValueError(f"translate_volume: a NIfTI volume has 1 channel, the generator expects {in_ch}.")
    slice_shape = [s for i, s in enumerate(data.shape) if i != axis]
    roi = [int(np.ceil(s / k) * k) for s in slice_shape]
    inferer = SliceInferer(
        spatial_dim=axis, roi_size=roi, sw_batch_size=sw_batch_size, padding_mode="replicate", progress=progress
    )
    xt = torch.as_tensor(x)[None, None].to(device)
    y = inferer(xt, generator)[0, 0].float().cpu().numpy()
    if y.shape != data.shape:
        raise RuntimeError(f"translate_volume: output shape {y.shape} differs from input {data.shape}.")
    if normalize:
        if output_stats is not None:
            mean, std = float(output_stats[0]), float(output_stats[1])
        y = y * std + mean
        if nz:
            y = np.where(data != 0, y, 0.0)
    y = y.astype(np.float32).reshape(img.shape)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    out = nib.Nifti1Image(y, img.affine, header=header)
    out.header.set_slope_inter(1.0, 0.0)
    atomic_write(path_out, lambda p: nib.save(out, p))
    return path_out


def _translate_2d(generator, path_in, path_out, device, normalize, nonzero, k, output_stats=None) -> str:
    from skimage import io

    arr = io.imread(path_in)
    dtype = arr.dtype
    x = arr.astype(np.float32)
    x = x[None] if x.ndim == 2 else np.moveaxis(x, -1, 0)  # (C, H, W)
    in_ch = getattr(generator, "in_channels", x.shape[0])
    if x.shape[0] != in_ch:
        raise ValueError(f"translate_volume: {path_in!r} has {x.shape[0]} channels, the generator expects {in_ch}.")
    xn, mean, std = _zscore(x, nonzero) if normalize else (x, 0.0, 1.0)
    y = translate_padded(generator, torch.as_tensor(xn)[None].to(device), k)[0].float().cpu().numpy()
    if normalize:
        if output_stats is not None:
            mean, std = float(output_stats[0]), float(output_stats[1])
        y = y * std + mean
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        y = np.clip(np.rint(y), info.min, info.max)
    y = y.astype(dtype)
    y = y[0] if y.shape[0] == 1 else np.moveaxis(y, 0, -1)
    atomic_write(path_out, lambda p: io.imsave(p, y, check_contrast=False))
    return path_out
