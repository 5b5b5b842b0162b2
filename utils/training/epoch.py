"""One training epoch: per batch the forward pass, loss, backward, optimizer step and LR scheduler step.

Reproducibility: the data order and augmentation of an epoch depend only on (seed, rank,
worker, epoch) (:func:`utils.data.loader.set_loader_epoch`), and torch's global generator
(dropout) is re-seeded from (seed, rank, epoch) at the epoch's start. Resuming in the middle
of an epoch draws and discards the batches already done, then restores the generator states
saved at the interruption, so the rest of the epoch is the same as without the stop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.data.loader import SeededLoader, set_loader_epoch, to_device
from utils.errors import UserError
from utils.training.builder import RunParts
from utils.training.distributed import all_reduce_sum
from utils.training.logger import progress
from utils.training.rng import restore_rng
from utils.training.stop import StopRequest


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


@dataclass
class EpochResult:
    """How an epoch went: mean loss, images seen, batches done (fewer than the loader's only after a stop),
    the lr of its last step, and torch's generator state at the stop (None without one)."""

    loss: float
    images: int
    done: int
    lr: float
    stop_rng: torch.Tensor | None = None


def _step_value(parts: RunParts, loss: torch.Tensor | None, stop_here: bool) -> tuple[float, bool]:
    """The batch's loss value and whether any rank stops, with one host synchronisation per step
    (the loss alone, or under DDP loss and stop flag reduced together)."""
    ctx = parts.ctx
    if not ctx.enabled:
        return (0.0 if loss is None else loss.item()), stop_here
    zero = torch.zeros((), dtype=torch.float64, device=parts.device)
    stats = torch.stack([zero if loss is None else loss.detach().double(),
                         torch.full((), float(stop_here), dtype=torch.float64, device=parts.device)])
    loss_total, stops = all_reduce_sum(stats, ctx).tolist()
    return loss_total / ctx.world_size, stops > 0


def train_epoch(parts: RunParts, model: nn.Module, loader: SeededLoader, epoch: int, stop: StopRequest,
                skip: int = 0, resume_rng: dict[str, Any] | None = None) -> EpochResult:
    """One pass of ``model`` (the net, DDP-wrapped under torchrun) over ``loader``.

    ``skip`` batches are drawn and discarded first (resuming in the middle of an epoch), then
    ``resume_rng`` is restored. Fewer batches than the loader holds are done only when a stop
    was requested. Raises :class:`NonFiniteLossError` when the loss is NaN or infinite.
    """
    args, world = parts.args, parts.ctx.world_size
    model.train()
    set_loader_epoch(loader, epoch)
    # Dropout draws from torch's global generator: make it a function of the epoch.
    torch.manual_seed(int(np.random.SeedSequence([args.seed, parts.ctx.rank, epoch]).generate_state(1)[0]))
    batches = iter(loader)
    total = len(loader)
    for _ in range(skip):
        next(batches)
    if skip and resume_rng is not None:
        restore_rng(resume_rng)
    bar = progress(range(skip, total), total=total, desc=f"epoch {epoch + 1}/{args.epochs}",
                   enabled=parts.ctx.is_main)
    bar.update(skip)
    loss_sum, seen, done, tick = 0.0, 0, skip, time.perf_counter()
    lr = parts.optimizer.param_groups[0]["lr"]
    for index in bar:
        rng_before = torch.get_rng_state()
        stop_here = stop.requested
        batch = None
        if not stop_here:
            try:
                batch = next(batches)
            except RuntimeError:
                # Ctrl-C also reaches the loader's workers, which then exit: treat it as the stop.
                if not stop.requested:
                    raise
                stop_here = True
        loss = None
        if batch is not None:
            images, labels = to_device(*batch, parts.device, channels_last=parts.cuda)
            lr = parts.optimizer.param_groups[0]["lr"]
            with torch.autocast(parts.device.type, dtype=parts.amp_dtype, enabled=args.amp):
                logits = model(images)
            loss = parts.criterion(logits.float(), labels)
        value, stop_here = _step_value(parts, loss, stop_here)
        if stop_here:
            return EpochResult(loss_sum / max(seen, 1), seen, index, lr, rng_before)
        if not math.isfinite(value):
            raise NonFiniteLossError(f"the loss became {value} at epoch {epoch + 1}, iteration {index + 1}")
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
        parts.scheduler.step()
        seen += images.shape[0] * world
        loss_sum += value * images.shape[0] * world
        done = index + 1
        now = time.perf_counter()
        bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{lr:.2e}",
                        img_s=f"{images.shape[0] * world / max(now - tick, 1e-9):.1f}", refresh=False)
        tick = now
    bar.close()
    return EpochResult(loss_sum / max(seen, 1), seen, done, lr)
