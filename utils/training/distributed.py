"""Distributed data parallel helpers: start-up from torchrun's environment, rank queries, reductions.

``torchrun`` (``python -m torch.distributed.run``) sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; when they are present and the world has more than one process we join the
process group (nccl on CUDA, gloo on CPU) and every rank trains on its own shard of the data.
Only rank 0 writes logs and checkpoints. Without those variables everything here degrades to
a single process, so the training loop has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from utils.device import resolve_device
from utils.errors import UserError


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, its device and the number of processes."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def enabled(self) -> bool:
        """True when a process group with more than one process is running."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints (rank 0)."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when torchrun's environment variables describe a world of more than one process."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_name: str = "auto") -> DistContext:
    """Join the process group when started by torchrun; otherwise return a single-process context.

    Under torchrun each process uses ``cuda:LOCAL_RANK`` (nccl) when CUDA is chosen, or the CPU (gloo).
    """
    device = resolve_device(device_name)
    if not launched_by_torchrun():
        return DistContext(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    world_size = int(os.environ["WORLD_SIZE"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) on this node: "
                            "lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    """Leave the process group (safe to call when none was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (unchanged in a single process)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def convert_sync_bn(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Replace BatchNorm by SyncBatchNorm when several CUDA processes train together."""
    if ctx.enabled and ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def wrap_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Wrap in DistributedDataParallel under torchrun; return ``model`` itself otherwise.

    DDP only synchronises the parameters that require gradients when it is built, so the
    training loop wraps again after (un)freezing the backbone.
    """
    if not ctx.enabled:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)

