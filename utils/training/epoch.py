"""One training epoch: per batch the forward pass, loss, backward, optimizer step and LR scheduler step.

Reproducibility: the data order of an epoch depends only on (seed, rank, epoch) and each
sample's augmentation on (seed, epoch, index) (:mod:`utils.data.loader`; the workers persist
across epochs and need no reseeding), and torch's global generator
(dropout) is re-seeded from (seed, rank, epoch) at the epoch's start. Resuming in the middle
of an epoch draws and discards the batches already done, then restores the generator states
saved at the interruption, so the rest of the epoch is the same as without the stop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.data.loader import SeededLoader, release_other_workers, set_loader_epoch, to_device
from utils.data.normalize import Normalization
from utils.errors import UserError
from utils.training.builder import RunParts
from utils.training.distributed import all_reduce_sum
from utils.training.logger import progress
from utils.training.rng import restore_rng
from utils.training.schedule import step_quietly
from utils.training.stop import StopRequest


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


@dataclass
class NonFiniteGuard:
    """Counts non-finite losses in a row: a step with one is skipped, and the run stops at ``limit``.

    Under AMP a few overflowing steps are expected (the gradient scaler skips them); in float32
    the limit is 1, since there a NaN means divergence.
    """

    limit: int = 1
    in_a_row: int = 0

    def check(self, value: float, epoch: int, iteration: int) -> bool:
        """True when the step may go ahead; raises :class:`NonFiniteLossError` at the limit."""
        if math.isfinite(value):
            self.in_a_row = 0
            return True
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            times = f" ({self.in_a_row} steps in a row)" if self.limit > 1 else ""
            raise NonFiniteLossError(f"the loss became {value} at epoch {epoch + 1}, iteration {iteration + 1}"
                                     + times)
        return False


@dataclass
class EpochResult:
    """How an epoch went: mean loss, images seen, batches done (fewer than the loader's only after a stop),
    the lr of its last step, and torch's generator state at the stop (None without one)."""

    loss: float
    images: int
    done: int
    lr: float
    stop_rng: torch.Tensor | None = None


def scaler_found_inf(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
    """Unscale the gradients and return the scaler's on-device inf/NaN flag (None without a scaler).

    ``GradScaler.step`` reads that flag with its own host synchronisation; reading it in the
    step's single reduction instead (:func:`_step_stats`) keeps one synchronisation per step.
    """
    if not scaler.is_enabled():
        return None
    scaler.unscale_(optimizer)
    flags = scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"].values()
    return torch.stack([flag.to(scaler._scale.device) for flag in flags]).sum()


def _step_stats(parts: RunParts, loss: torch.Tensor, found_inf: torch.Tensor | None,
                flags: tuple[bool, bool]) -> tuple[float, bool, bool, bool]:
    """One reduction and one host synchronisation per step: the batch's loss (mean over ranks), whether
    the gradients are non-finite somewhere, whether any rank asks to stop, whether any rank's batch was a
    stand-in (``flags`` = this rank's stop request and stand-in flag)."""
    device = loss.device
    no_inf = torch.zeros((), dtype=torch.float64, device=device)
    stats = torch.cat([torch.stack([loss.detach().double(), no_inf if found_inf is None else found_inf.double()]),
                       torch.tensor(flags, dtype=torch.float64).to(device, non_blocking=True)])
    loss_total, infs, stops, stand_ins = all_reduce_sum(stats, parts.ctx).tolist()
    return loss_total / parts.ctx.world_size, infs > 0, stops > 0, stand_ins > 0


def _agree_to_stop(parts: RunParts, stop: StopRequest) -> bool:
    """Whether any rank asks to stop (one reduction over the ranks)."""
    flag = torch.tensor([float(stop.requested)], dtype=torch.float64, device=parts.device)
    return all_reduce_sum(flag, parts.ctx).item() > 0


def _next_batch(batches: Iterator, stop: StopRequest, fallback: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, bool]:
    """The next batch, and whether it is the stand-in ``fallback``.

    Ctrl-C also reaches the loader's workers, which then exit: after a stop request that error
    means "stop". A single process (``fallback`` None) gets None; a rank under torchrun gets the
    stand-in batch, so that it still takes part in the step every other rank takes.
    """
    try:
        return next(batches), False
    except RuntimeError:
        if not stop.requested:
            raise
        return fallback, fallback is not None


def train_epoch(parts: RunParts, model: nn.Module, loader: SeededLoader, epoch: int, stop: StopRequest,
                skip: int = 0, resume_rng: dict[str, Any] | None = None,
                guard: NonFiniteGuard | None = None) -> EpochResult:
    """One pass of ``model`` (the net, DDP-wrapped under torchrun) over ``loader``.

    ``skip`` batches are drawn and discarded first (resuming in the middle of an epoch), then
    ``resume_rng`` is restored. Fewer batches than the loader holds are done only after a stop.
    A single process checks its stop flag before each batch. Under torchrun the ranks agree on
    stopping before any collective could diverge: at the epoch's start, then through each
    step's one reduction, which carries every rank's flag, so all ranks stop before the same
    next batch. Non-finite losses go to ``guard`` (:class:`NonFiniteGuard`), which skips the
    step or raises :class:`NonFiniteLossError`.
    """
    options, ctx = parts.options, parts.ctx
    guard = guard or NonFiniteGuard()
    model.train()
    # Workers persist across epochs: end those of the other training phase's loader (its batch size
    # differs), so that at most this loader's and the validation loader's pools hold memory.
    release_other_workers(parts.loaders.values(), keep=loader)
    set_loader_epoch(loader, epoch)
    # Dropout draws from torch's global generator: make it a function of the epoch.
    torch.manual_seed(int(np.random.SeedSequence([options.seed, ctx.rank, epoch]).generate_state(1)[0]))
    batches = iter(loader)
    total = len(loader)
    for _ in range(skip):
        next(batches)
    if skip and resume_rng is not None:
        restore_rng(resume_rng)
    bar = progress(range(skip, total), total=total, desc=f"epoch {epoch + 1}/{options.epochs}", enabled=ctx.is_main)
    bar.update(skip)
    normalization = Normalization.of(parts.spec)
    fallback = (torch.zeros(loader.batch_size, parts.spec.in_channels, *options.input_size, dtype=torch.uint8),
                torch.zeros(loader.batch_size, *options.input_size, dtype=torch.uint8)) if ctx.enabled else None
    loss_sum, seen, done, tick = 0.0, 0, skip, time.perf_counter()
    lr = parts.optimizer.param_groups[0]["lr"]
    stop_agreed = _agree_to_stop(parts, stop) if ctx.enabled else False
    for index in bar:
        rng_before = torch.get_rng_state()
        batch, stand_in = None, False
        if not (stop_agreed if ctx.enabled else stop.requested):
            batch, stand_in = _next_batch(batches, stop, fallback)
        if batch is None:
            return EpochResult(loss_sum / max(seen, 1), seen, index, lr, rng_before)
        images, labels = to_device(*batch, parts.device, channels_last=parts.channels_last,
                                   normalization=normalization)
        lr = parts.optimizer.param_groups[0]["lr"]
        with torch.autocast(parts.device.type, dtype=parts.amp_dtype, enabled=options.amp):
            logits = model(images)
        loss = parts.criterion(logits.float(), labels)
        parts.optimizer.zero_grad(set_to_none=True)
        parts.scaler.scale(loss).backward()
        value, found_inf, stop_agreed, stand_ins = _step_stats(
            parts, loss, scaler_found_inf(parts.scaler, parts.optimizer),
            (ctx.enabled and (stand_in or stop.requested), stand_in))
        if stand_ins:
            # Some rank had no real batch (Ctrl-C ended its loader): drop this step everywhere and stop.
            parts.optimizer.zero_grad(set_to_none=True)
            return EpochResult(loss_sum / max(seen, 1), seen, index, lr, rng_before)
        finite = guard.check(value, epoch, index)
        if finite and not found_inf:
            parts.optimizer.step()
            parts.scheduler.step()
        else:
            # The schedule counts iterations; LambdaLR warns when stepped before the optimizer.
            step_quietly(parts.scheduler)
        parts.scaler.update()  # a no-op without AMP
        if finite:
            seen += images.shape[0] * ctx.world_size
            loss_sum += value * images.shape[0] * ctx.world_size
        done = index + 1
        now = time.perf_counter()
        bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", lr=f"{lr:.2e}",
                        img_s=f"{images.shape[0] * ctx.world_size / max(now - tick, 1e-9):.1f}", refresh=False)
        tick = now
    bar.close()
    return EpochResult(loss_sum / max(seen, 1), seen, done, lr)

