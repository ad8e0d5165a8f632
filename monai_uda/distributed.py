"""Multi-GPU (DDP) helpers that the bundles' ``multi_gpu_*.json`` configs call (as ``monai_uda.bundle.distributed``).

This module only imports ``torch``, so that worker processes (tests, isolated rank-0 jobs) start fast.

The configs follow the MONAI model-zoo pattern (``torchrun --nproc_per_node=N -m monai.bundle run
--config_file "['configs/X.json','configs/multi_gpu_X.json']"``): the process group is created in
``initialize`` (:func:`init_distributed`: ``nccl`` on CUDA, ``gloo`` on the CPU), networks are wrapped in
``DistributedDataParallel`` (:func:`wrap_ddp`), loaders get a ``DistributedSampler``, logging and
checkpoint handlers run on rank 0 only (:func:`rank0_handlers`) and the group is destroyed in ``finalize``
(:func:`destroy_distributed`).

Every helper degrades to the single-process behaviour when no process group is initialised, so a
``multi_gpu_*.json`` config also runs with plain ``python -m monai.bundle run`` (world size 1).

Work that only one process must do (a prerequisite training, writing pseudo-labels, training Random
Forests) goes through :func:`on_rank0`: rank 0 does it, every rank waits for it and receives its result (and
its failure, so that no rank hangs in a barrier when rank 0 raised).
"""

from __future__ import annotations

import datetime
import logging
import os
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "is_distributed",
    "get_rank",
    "get_world_size",
    "is_rank0",
    "local_device",
    "init_distributed",
    "destroy_distributed",
    "barrier",
    "wrap_ddp",
    "unwrap",
    "rank0_handlers",
    "RANK0_ONLY_HANDLERS",
    "on_rank0",
    "all_reduce",
    "all_gather_objects",
    "interleave_gathered",
    "shard_indices",
]

logger = logging.getLogger(__name__)

#: class names of handlers that log or write files and therefore run on rank 0 only (subclasses included)
RANK0_ONLY_HANDLERS = (
    "ValidationHistory",
    "CheckpointSaver",
    "StatsHandler",
    "TensorBoardStatsHandler",
    "TensorBoardImageHandler",
    "ProgressBar",
    "MLFlowHandler",
    "ClearMLStatsHandler",
)

_OWNS_GROUP = False

#: environment variables of ``torchrun`` that an isolated rank-0 process must not inherit
_DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK", "ROLE_WORLD_SIZE",
             "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
             "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE", "TORCH_NCCL_ASYNC_ERROR_HANDLING")


def is_distributed() -> bool:
    """Whether a default process group is initialised (also with a single rank)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank0() -> bool:
    """``get_rank() == 0``."""
    return get_rank() == 0


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available (``torchrun`` sets ``LOCAL_RANK``), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(backend: str | None = None, timeout_minutes: float | None = None) -> bool:
    """Create the default process group (``env://``, as set by ``torchrun``) unless one exists.

    Args:
        backend: ``None`` picks ``"nccl"`` when CUDA is available and ``"gloo"`` otherwise.
        timeout_minutes: collective/barrier timeout; ``None`` keeps PyTorch's default. Configs whose
            rank 0 may run a long prerequisite stage alone while the other ranks wait set a larger one.

    Returns:
        True when this call created the group (only then does :func:`destroy_distributed` destroy it).
        Without ``torchrun``'s environment (no ``WORLD_SIZE``) nothing is created and False is returned,
        so a ``multi_gpu_*.json`` config also runs as one plain process.
    """
    global _OWNS_GROUP
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build.")
    if dist.is_initialized():
        return False
    if "WORLD_SIZE" not in os.environ:
        logger.warning("init_distributed: no torchrun environment (WORLD_SIZE unset); running as a single process.")
        return False
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    kwargs: dict[str, Any] = {"backend": backend}
    if timeout_minutes is not None:
        kwargs["timeout"] = datetime.timedelta(minutes=float(timeout_minutes))
    if backend == "nccl":
        torch.cuda.set_device(local_device())
    dist.init_process_group(**kwargs)
    _OWNS_GROUP = True
    logger.info("process group: backend %s, rank %d of %d", backend, dist.get_rank(), dist.get_world_size())
    return True


def destroy_distributed() -> None:
    """Destroy the default process group if :func:`init_distributed` created it (after a final barrier)."""
    global _OWNS_GROUP
    if _OWNS_GROUP and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    _OWNS_GROUP = False


def barrier() -> None:
    """``dist.barrier()`` when distributed, else nothing."""
    if is_distributed():
        dist.barrier()


def wrap_ddp(
    module: torch.nn.Module,
    device: str | torch.device | None = None,
    find_unused_parameters: bool = False,
    sync_batchnorm: bool = False,
    depends_on: Any = None,
    **kwargs: Any,
) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` when distributed, else ``module`` itself.

    Args:
        module: the network (already on ``device``).
        device: its device; on CUDA it becomes ``device_ids=[device]``.
        find_unused_parameters: passed to DDP (needed when some trainable parameters get no gradient).
        sync_batchnorm: convert BatchNorm layers to ``SyncBatchNorm`` first (batch statistics over all ranks).
        depends_on: ignored; a config passes e.g. the result of a parameter-freezing call here so that the
            freezing is evaluated *before* the wrapping (DDP only synchronises parameters that require
            gradients at construction time).
        kwargs: other ``DistributedDataParallel`` arguments.
    """
    del depends_on
    if not is_distributed():
        return module
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        return module
    if sync_batchnorm:
        module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    device = torch.device(device) if device is not None else next(module.parameters()).device
    ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=ids, output_device=device if ids else None,
        find_unused_parameters=find_unused_parameters, **kwargs,
    )


def unwrap(module: Any) -> Any:
    """The module inside a ``DistributedDataParallel``/``DataParallel`` wrapper (others unchanged)."""
    if isinstance(module, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return module.module
    return module


def rank0_handlers(handlers: Sequence | None, rank0_only: Sequence[str] = RANK0_ONLY_HANDLERS) -> list:
    """``handlers`` on rank 0; on other ranks without those whose class (or a base class) is in ``rank0_only``.

    Selecting by type, not by position, keeps the config correct when handlers are added, removed or
    ``_disabled_`` in the base config. Handlers that take part in collectives (``ValidationHandler``,
    metric handlers, early stopping) stay on every rank.
    """
    handlers = list(handlers or [])
    if is_rank0():
        return handlers
    names = set(rank0_only)
    return [h for h in handlers if not any(c.__name__ in names for c in type(h).__mro__)]


def _isolated_call(fn: Callable, args: tuple, kwargs: dict, conn: Any) -> None:  # runs in a spawned process
    for k in _DIST_ENV:
        os.environ.pop(k, None)
    try:
        conn.send((True, fn(*args, **kwargs)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        conn.send((False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        conn.close()


def _run_isolated(fn: Callable, args: tuple, kwargs: dict) -> Any:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_isolated_call, args=(fn, args, kwargs, child))
    proc.start()
    child.close()
    try:
        ok, value = parent.recv()
    except EOFError:
        ok, value = False, "the isolated process died without a result"
    proc.join()
    if not ok:
        raise RuntimeError(f"{getattr(fn, '__qualname__', fn)} failed in the isolated rank-0 process: {value}")
    return value


def on_rank0(fn: Callable, *args: Any, isolate: bool = False, done: str | None = None, **kwargs: Any) -> Any:
    """Run ``fn(*args, **kwargs)`` on rank 0 only; every rank waits and returns rank 0's result.

    Without a process group this is just ``fn(*args, **kwargs)``.

    Args:
        fn: the work (e.g. ``ensure_source_checkpoint``); its result must be picklable when distributed.
        isolate: run it in a freshly spawned process without the process group. Needed when ``fn`` runs a
            nested (single-process) bundle: MONAI metrics and ignite synchronise across ranks whenever a
            process group exists, which would deadlock while the other ranks wait here. ``fn`` and its
            arguments must then be picklable (module-level functions, paths, dicts, devices).
        done: a file that ``fn`` produces: when every rank already sees it, ``fn`` (which must then be
            cheap, e.g. ``ensure_checkpoint`` returning the existing path) is called on every rank directly,
            with no isolated process.

    Raises:
        RuntimeError: on every rank when ``fn`` raised on rank 0 (its message is passed on).
    """
    if not is_distributed():
        return fn(*args, **kwargs)
    if done is not None and bool(all_reduce(torch.tensor([float(os.path.isfile(done))]), op="min")[0] > 0):
        return fn(*args, **kwargs)
    box: list[Any] = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = (True, _run_isolated(fn, args, kwargs) if isolate else fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - sent to every rank
            box[0] = (False, f"{type(e).__name__}: {e}")
            logger.error("on_rank0: %s failed on rank 0:\n%s", getattr(fn, "__qualname__", fn), traceback.format_exc())
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    ok, value = box[0]
    if not ok:
        raise RuntimeError(f"{getattr(fn, '__qualname__', fn)} failed on rank 0: {value}")
    return value


def _collective_device() -> torch.device | None:
    """The device collectives of the current backend need (the current GPU for NCCL, else None/CPU)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce a copy of ``tensor`` (``"sum"``, ``"max"`` or ``"min"``); returned on ``tensor``'s device.

    The copy is moved to the GPU for NCCL and stays on the CPU for gloo; float64 is kept. Without a
    process group ``tensor`` is returned unchanged.
    """
    if not is_distributed():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"op must be one of {sorted(ops)}, got {op!r}.")
    dev = _collective_device()
    t = tensor.detach().clone().to(dev if dev is not None else "cpu")
    dist.all_reduce(t, op=ops[op])
    return t.to(tensor.device)


def all_gather_objects(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (picklable objects); ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def interleave_gathered(per_rank: Sequence[Sequence[Any]]) -> list[Any]:
    """Undo a round-robin split (``items[rank::world_size]``, e.g. an unshuffled ``DistributedSampler``
    with ``even_divisible=False``): ``[[a0, a2], [a1]] -> [a0, a1, a2]``."""
    out: list[Any] = []
    longest = max((len(p) for p in per_rank), default=0)
    for i in range(longest):
        out.extend(p[i] for p in per_rank if i < len(p))
    return out


def shard_indices(n: int, rank: int | None = None, world_size: int | None = None, even: bool = False) -> list[int]:
    """Round-robin share of ``range(n)`` of ``rank``: ``[rank, rank + W, ...]``.

    Args:
        n: number of items.
        rank, world_size: default: this process's.
        even: pad (by wrapping around, as ``torch.utils.data.DistributedSampler``) so that every rank gets
            ``ceil(n / W)`` items, which DDP training needs (the same number of iterations on every rank);
            padded items appear twice overall. Without it shards differ by at most one item and the union is
            exactly ``range(n)`` once.
    """
    rank = get_rank() if rank is None else int(rank)
    world_size = get_world_size() if world_size is None else int(world_size)
    if n < 1:
        return []
    total = -(-n // world_size) * world_size if even else n
    return [i % n for i in range(rank, total, world_size)]
