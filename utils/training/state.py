"""Checkpoints of a training run: what they hold, saving them after each epoch or a stop, resuming from one.

A checkpoint holds the model, optimizer, scheduler, scaler and generator states, the epoch and
the batches done in it, the best mIoU, the history and the config. Resuming from ``last.pth``
of a single process on the CPU therefore gives bitwise the same weights as an uninterrupted
run, also after a Ctrl-C in the middle of an epoch; elsewhere (CUDA kernels, several
processes) it continues the same schedule and data order. Files go through
:mod:`utils.checkpoint` (atomic writes, ``weights_only=True`` reads).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from utils.checkpoint import CHECKPOINT_FORMAT, copy_checkpoint, load_weights, read_weights_file, save_checkpoint
from utils.errors import UserError
from utils.training.builder import RunParts
from utils.training.distributed import barrier
from utils.training.rng import capture_rng
from utils.training.schedule import seek, steps_before


@dataclass
class RunProgress:
    """Where a run stands: the epoch and batch to start from, the best mIoU, the per-epoch history, and the
    generator states saved at an interruption (restored once the batches already done are skipped)."""

    start_epoch: int = 0
    start_iteration: int = 0
    best_miou: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)
    resume_rng: dict[str, Any] | None = None

    def describe(self, path: str) -> str:
        """The run summary's line for a resumed run."""
        where = f"epoch {self.start_epoch}" + (f", iteration {self.start_iteration}" if self.start_iteration else "")
        return f"{path} ({where} done, best mIoU {self.best_miou:.4f})"


def checkpoint_state(parts: RunParts, progress: RunProgress, epoch: int, iteration: int = 0,
                     rng: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything needed to continue the run (and, through ``config``, to use the model)."""
    return {
        "model": parts.net.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "epoch": epoch,
        "iteration": iteration,
        "best_miou": progress.best_miou,
        "history": progress.history,
        "rng": rng or capture_rng(),
        "spec": parts.spec.to_dict(),
        "train": parts.settings,
        "format": CHECKPOINT_FORMAT,
    }


def save_epoch(parts: RunParts, progress: RunProgress, save_dir: Path, epoch: int, improved: bool) -> None:
    """After epoch ``epoch`` (1-based): last.pth, best.pth when ``improved``, epoch_NNN.pth every --save-period."""
    if parts.ctx.is_main:
        last = save_checkpoint(checkpoint_state(parts, progress, epoch), save_dir / "last.pth")
        # Serialise once; the other files are byte copies of last.pth.
        if improved:
            copy_checkpoint(last, save_dir / "best.pth")
        if epoch % parts.options.save_period == 0:
            copy_checkpoint(last, save_dir / f"epoch_{epoch:03d}.pth")
    barrier(parts.ctx)


def save_interrupted(parts: RunParts, progress: RunProgress, path: Path, epoch: int, done: int,
                     stop_rng: torch.Tensor | None) -> None:
    """last.pth in the middle of epoch ``epoch`` (0-based) after ``done`` batches, with torch's generator
    state from before the first batch not done (``stop_rng``)."""
    rng = capture_rng()
    rng["torch"] = stop_rng
    save_checkpoint(checkpoint_state(parts, progress, epoch, done, rng), path)


def recorded_settings(obj: dict[str, Any]) -> dict[str, Any]:
    """The flags and model a training checkpoint was written with: its ``train`` settings and ``spec``, or
    the one flat ``config`` of checkpoints from before the spec existed."""
    if "spec" in obj:
        return {**(obj.get("train") or {}), **obj["spec"]}
    return dict(obj.get("config") or {})


def _check_compatible(path: str, saved: dict[str, Any], parts: RunParts) -> None:
    """UserError when the checkpoint was trained with another optimizer, schedule or model than this run."""
    options = parts.options
    for key, flag in (("optimizer", "--optimizer"), ("lr_schedule", "--lr-schedule")):
        if saved.get(key) not in (None, getattr(options, key)):
            raise UserError(f"--resume {path} was trained with {flag} {saved[key]}, but this run has {flag} "
                            f"{getattr(options, key)}: pass {flag} {saved[key]} to continue it")
    spec = parts.spec.to_dict()
    for key, what, hint in (("task", "--task {}", "pass --task {}"),
                            ("backbone", "the {} backbone", "pass --backbone {}"),
                            ("num_classes", "{} classes", "pass the same --classes file or --num-classes {}"),
                            ("downsample_factor", "output stride {}", "pass --downsample-factor {}"),
                            ("head", "the {} head", "pass --head {}"),
                            ("in_channels", "{} input band(s)", "train on data of {} band(s)")):
        # Checkpoints from before --task, --head and rasters existed: multi-class, standard head, RGB.
        value = saved.get(key, {"task": "multiclass", "head": "standard", "in_channels": 3}.get(key))
        if value != spec[key]:
            raise UserError(f"--resume {path} was trained with {what.format(value)}, but this run has "
                            f"{what.format(spec[key])}: {hint.format(value)} to continue it, "
                            "or start a new run (--weights loads what fits)")
    bands = [",".join(map(str, b)) if b else None for b in (saved.get("bands"), spec["bands"])]
    if bands[0] != bands[1]:
        said = [f"--bands {b}" if b else "every band" for b in bands]
        raise UserError(f"--resume {path} was trained on {said[0]}, but this run reads {said[1]}: "
                        f"{'pass ' + said[0] if bands[0] else 'drop --bands'} to continue it")


def load_resume(path: str, parts: RunParts) -> RunProgress:
    """Restore a training checkpoint into ``parts``; every mismatch is checked before any state is loaded."""
    obj = read_weights_file(path)
    if obj.get("format") != CHECKPOINT_FORMAT or "optimizer" not in obj:
        raise UserError(f"--resume {path} is not a training checkpoint written by train.py (it holds no "
                        "optimizer state); use --weights to start from its weights instead")
    recorded = recorded_settings(obj)
    _check_compatible(path, recorded, parts)
    load_weights(parts.net, obj["model"], strict=True, source=path)
    threshold = (obj.get("spec") or obj.get("config") or {}).get("threshold")
    if parts.spec.task_obj.thresholded and threshold is not None:
        parts.spec.threshold = float(threshold)
    try:
        parts.optimizer.load_state_dict(obj["optimizer"])
    except ValueError as exc:
        raise UserError(f"--resume {path}: its optimizer state does not fit --optimizer "
                        f"{parts.options.optimizer} ({exc}); use the optimizer it was trained with") from None
    if "lr_lambdas" in (obj.get("scheduler") or {}):
        parts.scheduler.load_state_dict(obj["scheduler"])
    if obj.get("scaler"):
        parts.scaler.load_state_dict(obj["scaler"])
    progress = RunProgress(start_epoch=int(obj["epoch"]), start_iteration=int(obj.get("iteration", 0)),
                           best_miou=float(obj.get("best_miou", -1.0)), resume_rng=obj.get("rng"))
    progress.history = [row for row in obj.get("history", []) if int(row["epoch"]) <= progress.start_epoch]
    if progress.start_epoch >= parts.options.epochs:
        raise UserError(f"--resume {path} has already finished {progress.start_epoch} epochs; raise --epochs "
                        "to train longer")
    seek(parts.scheduler, steps_before(parts.plan, progress.start_epoch, progress.start_iteration))
    return progress
