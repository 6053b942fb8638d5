"""``torchrun`` support: the process group, DistributedDataParallel and sharded loaders.

When a script that calls :func:`sconce.train` is launched with ``torchrun``, training runs
with ``torch.nn.parallel.DistributedDataParallel`` (gloo on CPU, nccl on CUDA), each rank
reading its own shard of the training set. Outside torchrun nothing here does anything.

Example:
    >>> is_distributed()  # not under torchrun
    False
"""

from __future__ import annotations

import os
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data.distributed import DistributedSampler


def is_distributed() -> bool:
    """True when launched by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def rank() -> int:
    """This process's rank (0 outside torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(
        os.environ.get("RANK", "0")
    )


def world_size() -> int:
    """How many processes take part (1 outside torchrun).

    Example:
        >>> world_size()  # not under torchrun
        1
    """
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else int(
        os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True on rank 0: the process that logs, shows progress and writes files."""
    return rank() == 0


def ensure_process_group(device: torch.device) -> None:
    """Initialise the default process group from torchrun's environment, once.

    Uses nccl for CUDA devices and gloo otherwise; on CUDA, binds this process to the GPU
    numbered ``LOCAL_RANK``.
    """
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)


def local_device(device: torch.device) -> torch.device:
    """The device this rank trains on (``cuda:LOCAL_RANK`` for CUDA)."""
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel (parameters are broadcast from rank 0)."""
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shard_loader(loader: DataLoader[Any], seed: int) -> DataLoader[Any]:
    """A loader over the same dataset where each rank reads its own shard."""
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,
        shuffle=isinstance(loader.sampler, RandomSampler),
        seed=seed,
        drop_last=loader.drop_last,
    )
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
    )


def broadcast_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm statistics) to every rank.

    DDP syncs buffers at the start of each forward, so after the last step each rank holds
    statistics updated by its own last batch; this makes the final models identical.
    """
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)


T = TypeVar("T")


def from_rank0(value: T, device: torch.device) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself outside torchrun), so that a decision
    taken on a measurement only rank 0 makes (a latency) is the same on every rank.

    Example:
        >>> from_rank0(1.5, torch.device("cpu"))  # not under torchrun
        1.5
    """
    if not is_distributed():
        return value
    ensure_process_group(local_device(device))
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
