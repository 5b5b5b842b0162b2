"""The learning-rate schedule: the original recipe's batch scaling and the schedule as a function of the step.

:func:`scaled_lr` scales ``--lr`` and ``--min-lr`` by the batch size and clamps them to the
optimizer's range. :func:`lr_at` is the schedule (``cos`` or ``step``) at a position measured
in (fractional) epochs. A run drives torch's ``LambdaLR`` with :func:`lr_at_step`, a plain
function of the number of iterations done, bound to a :class:`SchedulePlan` that lists the
phases (frozen, unfrozen): each has its own batch size, so its own iterations per epoch and lr
bounds. The plan is rebuilt from the flags, so the scheduler's state is its step count alone;
the checkpoint restores it exactly.
"""

from __future__ import annotations

import math
import warnings
from functools import partial
from typing import NamedTuple

import torch
from torch.optim.lr_scheduler import LambdaLR

from nets.registry import get_backbone

LR_SCHEDULES = ("cos", "step")
# Learning-rate bounds after batch scaling (the original recipe): (lowest, highest) initial lr per optimizer.
# A backbone's registry entry narrows them where the original does (Xception with Adam: exactly 1e-4).
LR_LIMITS = {"sgd": (5e-4, 1e-1), "adam": (3e-4, 5e-4), "adamw": (3e-4, 5e-4)}
REFERENCE_BATCH = 16


def lr_limits(optimizer: str, backbone: str = "mobilenet") -> tuple[float, float]:
    """The original's (lowest, highest) initial lr after batch scaling for this optimizer and backbone."""
    return get_backbone(backbone).lr_limits.get(optimizer, LR_LIMITS[optimizer])


def scaled_lr(optimizer: str, batch_size: int, lr: float, min_lr: float,
              backbone: str = "mobilenet") -> tuple[float, float]:
    """The original recipe's batch scaling: ``lr * batch / 16`` clamped to the optimizer's (and backbone's) range.

    ``min_lr`` is scaled the same way and clamped to a hundredth of that range.
    """
    low, high = lr_limits(optimizer, backbone)
    lr_fit = min(max(batch_size / REFERENCE_BATCH * lr, low), high)
    min_lr_fit = min(max(batch_size / REFERENCE_BATCH * min_lr, low * 1e-2), high * 1e-2)
    return lr_fit, min_lr_fit


def lr_at(kind: str, total_epochs: int, lr: float, min_lr: float, position: float) -> float:
    """The learning rate ``position`` epochs into a run of ``total_epochs``.

    ``cos``: quadratic warmup from a tenth of the lr over ``min(max(0.1 E, 1), 3)`` epochs,
    cosine down to ``min_lr``, then ``min_lr`` for the last ``min(max(0.3 E, 1), 15)`` epochs
    (the original's ``yolox_warm_cos_lr``). ``step``: ten equal steps from lr to min_lr.
    """
    if kind not in LR_SCHEDULES:
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {kind!r}")
    total = total_epochs
    if kind == "step":
        steps = 10
        decay = (min_lr / lr) ** (1 / (steps - 1)) if lr > 0 and min_lr > 0 else 0.0
        return lr * decay ** math.floor(position / (total / steps))
    warmup = min(max(0.1 * total, 1.0), 3.0)
    warmup_start = max(0.1 * lr, 1e-6)
    flat = min(max(0.3 * total, 1.0), 15.0)
    if position <= warmup:
        return (lr - warmup_start) * (position / warmup) ** 2 + warmup_start
    if position >= total - flat or total - warmup - flat <= 0:
        return min_lr
    progress = (position - warmup) / (total - warmup - flat)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


class Phase(NamedTuple):
    """A stretch of epochs trained at one batch size: its name, epochs, iterations per epoch and lr bounds."""

    name: str
    epochs: int
    batches: int
    lr: float
    min_lr: float


class SchedulePlan(NamedTuple):
    """The whole run's schedule: its kind, total epochs and the phases in order (none of them empty)."""

    kind: str
    total_epochs: int
    phases: tuple[Phase, ...]


def lr_at_step(step: int, plan: SchedulePlan) -> float:
    """The lr of iteration ``step`` (0-based, counted over the whole run): ``lr_at(epoch + i / n)``
    with the bounds of the phase that the iteration falls in. Past the last phase it continues there."""
    first_epoch = 0
    for phase in plan.phases:
        steps = phase.epochs * phase.batches
        if step < steps or phase is plan.phases[-1]:
            done, index = divmod(step, phase.batches)
            position = first_epoch + done + index / phase.batches
            return lr_at(plan.kind, plan.total_epochs, phase.lr, phase.min_lr, position)
        step -= steps
        first_epoch += phase.epochs
    raise ValueError("the schedule plan has no phase")


def steps_before(plan: SchedulePlan, epoch: int, iteration: int) -> int:
    """Number of iterations done before ``iteration`` of ``epoch`` (both 0-based)."""
    steps, first_epoch = 0, 0
    for phase in plan.phases:
        if epoch < first_epoch + phase.epochs:
            return steps + (epoch - first_epoch) * phase.batches + iteration
        steps += phase.epochs * phase.batches
        first_epoch += phase.epochs
    return steps + iteration


def build_scheduler(optimizer: torch.optim.Optimizer, plan: SchedulePlan) -> LambdaLR:
    """``LambdaLR`` stepping through ``plan`` once per iteration (call ``step()`` after each optimizer step)."""
    for group in optimizer.param_groups:
        # LambdaLR multiplies each group's initial lr by the function's value: with 1 the value is the lr itself.
        group["initial_lr"] = 1.0
    # A partial of a module-level function pickles, and LambdaLR stores none of it in its state_dict.
    return LambdaLR(optimizer, partial(lr_at_step, plan=plan))


def seek(scheduler: LambdaLR, steps_done: int) -> None:
    """Move ``scheduler`` to ``steps_done`` iterations, setting the optimizer's lr for the next one.

    A no-op for a checkpoint of this run; it matters for a checkpoint whose schedule state is
    from before LambdaLR, or one trained with other batch sizes: both continue at the same epoch.
    """
    if scheduler.last_epoch == steps_done:
        return
    scheduler.last_epoch = steps_done - 1
    step_quietly(scheduler)


def step_quietly(scheduler: LambdaLR) -> None:
    """``scheduler.step()`` without LambdaLR's warning about stepping before the optimizer: after a
    seek or a skipped (non-finite) optimizer step that order is intended, not a mistake."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
        scheduler.step()


def describe(plan: SchedulePlan) -> str:
    """The phases' scaled lr bounds for the run summary, e.g. ``frozen 0.004 -> 4e-05, unfrozen ...``."""
    return ", ".join(f"{phase.name} {phase.lr:.3g} -> {phase.min_lr:.3g}" for phase in plan.phases)
