"""The training loop behind ``train.py``: the run's epochs through the frozen and unfrozen phases.

The run is a sequence of epochs; each belongs to the *frozen* phase (backbone weights fixed,
``--freeze-batch-size``) or the *unfrozen* phase. While frozen, the backbone's BatchNorm
running statistics keep adapting as in the original (the model takes RGB/255 without the
ImageNet mean/std, so the ImageNet statistics do not fit its inputs); ``--freeze-bn`` fixes
them too. Entering a phase
is one method (:meth:`Trainer.enter_phase`): it (un)freezes, switches to that phase's loader
and re-wraps DDP; the LR schedule knows the phases already (:mod:`utils.training.schedule`).
The parts live in their own modules: building the run (:mod:`~utils.training.builder`), one
epoch (:mod:`~utils.training.epoch`), validation (:mod:`~utils.training.validate`),
checkpoints and resume (:mod:`~utils.training.state`), stop handling (:mod:`~utils.training.stop`).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

from nets.deeplabv3_plus import freeze_backbone, unfreeze_backbone
from utils.training.args import resolve_start
from utils.training.builder import build_run
from utils.training.demo import prepare_demo_data
from utils.training.distributed import (
    DistContext,
    barrier,
    cleanup_distributed,
    init_distributed,
    launched_by_torchrun,
    wrap_model,
)
from utils.training.epoch import EpochResult, NonFiniteGuard, NonFiniteLossError, train_epoch
from utils.training.logger import RunLogger, format_summary
from utils.training.options import TrainOptions
from utils.training.schedule import describe
from utils.training.state import RunProgress, load_resume, save_epoch, save_interrupted
from utils.training.stop import StopRequest, resume_command
from utils.training.validate import evaluate


class Trainer:
    """One training run: its parts (:func:`~utils.training.builder.build_run`), progress, logger and stop flag.

    Args:
        options: validated options (see :func:`utils.training.args.validate_args`).
        ctx: the distributed context (single process when not under torchrun).
    """

    def __init__(self, options: TrainOptions, ctx: DistContext) -> None:
        self.options, self.ctx = options, ctx
        self.save_dir = Path(options.save_dir)
        self.parts = build_run(options, ctx)
        self.progress = load_resume(options.resume, self.parts) if options.resume else RunProgress()
        self.frozen: bool | None = None
        self.model = self.parts.net  # DDP-wrapped under torchrun
        self.train_loader = None
        self.logger = RunLogger(self.save_dir, enabled=ctx.is_main, purge_step=self.progress.start_epoch + 1)
        self.stop = StopRequest()
        self.guard = NonFiniteGuard(options.nonfinite_limit if options.amp else 1)

    def enter_phase(self, frozen: bool) -> None:
        """Switch between the frozen and unfrozen phase: freezing, the phase's loader, the DDP wrapper."""
        if frozen == self.frozen:
            return
        self.frozen = frozen
        if frozen:
            freeze_backbone(self.parts.net, fix_bn=self.options.freeze_bn)
        else:
            unfreeze_backbone(self.parts.net)
        self.train_loader = self.parts.loaders[frozen]
        # DDP registers only the parameters that require gradients when it is built: build it again.
        self.model = wrap_model(self.parts.net, self.ctx)

    def train_epoch(self, epoch: int, skip: int = 0) -> EpochResult:
        """One epoch of the current phase (see :func:`utils.training.epoch.train_epoch`)."""
        return train_epoch(self.parts, self.model, self.train_loader, epoch, self.stop, skip,
                           self.progress.resume_rng, self.guard)

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Validation loss and scores after ``epoch`` epochs (see :func:`utils.training.validate.evaluate`)."""
        return evaluate(self.parts, epoch, self.logger)

    def fit(self) -> int:
        """Train from the start epoch to ``--epochs``; return the exit status (130 after Ctrl-C)."""
        options, progress = self.options, self.progress
        if self.ctx.is_main:
            self._print_summary()
        with self.stop.installed():
            for epoch in range(progress.start_epoch, options.epochs):
                self.enter_phase(epoch < options.freeze_epochs)
                skip = progress.start_iteration if epoch == progress.start_epoch else 0
                started = time.perf_counter()
                try:
                    result = self.train_epoch(epoch, skip)
                except NonFiniteLossError as exc:
                    raise NonFiniteLossError(self._nan_message(str(exc))) from None
                if result.done < len(self.train_loader):
                    return self._interrupted(epoch, result)
                seconds = time.perf_counter() - started
                row: dict[str, Any] = {"epoch": epoch + 1, "phase": "frozen" if self.frozen else "unfrozen",
                                       "lr": f"{result.lr:.6g}", "train_loss": f"{result.loss:.5f}",
                                       "seconds": f"{seconds:.1f}", "images_per_s": f"{result.images / seconds:.2f}"}
                improved = False
                if (epoch + 1) % options.eval_period == 0 or epoch + 1 == options.epochs:
                    scores = self.evaluate(epoch + 1)
                    row.update(scores)
                    # A binary run keeps the checkpoint of the best foreground IoU, the figure it is tuned for.
                    score = scores.get("iou", scores["miou"])
                    improved = score > progress.best_miou
                    if improved:
                        progress.best_miou = score
                    row = {k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in row.items()}
                progress.history.append(row)
                save_epoch(self.parts, progress, self.save_dir, epoch + 1, improved)
                self.logger.log_epoch(progress.history)
        self.logger.close()
        if self.ctx.is_main:
            self._print_next_steps()
        return 0

    def _print_summary(self) -> None:
        parts = self.parts
        extra = {"init": parts.init_note, "num_train": len(parts.train_set), "num_val": len(parts.val_set),
                 "lr_note": describe(parts.plan), "device": str(parts.device), "world_size": self.ctx.world_size,
                 "amp_dtype": str(parts.amp_dtype).removeprefix("torch."),
                 "sync_bn": self.options.sync_bn and self.ctx.enabled}
        if self.options.resume:
            extra["resume"] = self.progress.describe(self.options.resume)
        if parts.class_weights is not None:
            extra["class_weights"] = ", ".join(f"{w:.3g}" for w in parts.class_weights.tolist())
        config = {**parts.settings, **parts.spec.to_dict()}
        print(format_summary(config, extra), flush=True)
        self.logger.write_config(config)

    def _nan_message(self, what: str) -> str:
        last = self.save_dir / "last.pth"
        history = self.progress.history
        kept = f"{last} (epoch {history[-1]['epoch'] if history else self.progress.start_epoch}) is kept" \
            if last.is_file() else "no checkpoint was written yet"
        return (f"{what}: training stopped and {kept}. "
                "Lower --lr, train without --amp, or check the labels (values must be class indices or 255)")

    def _interrupted(self, epoch: int, result: EpochResult) -> int:
        if self.ctx.is_main:
            last = self.save_dir / "last.pth"
            save_interrupted(self.parts, self.progress, last, epoch, result.done, result.stop_rng)
            self.logger.log_epoch(self.progress.history)
            self.logger.close()
            print(f"\ninterrupted: saved {last} (epoch {epoch + 1}, {result.done} of {len(self.train_loader)} "
                  "batches done). Continue exactly where it stopped with:\n  "
                  + resume_command(self.options.argv, self.save_dir, self.ctx.world_size), file=sys.stderr)
        barrier(self.ctx)
        return 130

    def _print_next_steps(self) -> None:
        weights = self.save_dir / ("best.pth" if (self.save_dir / "best.pth").is_file() else "last.pth")
        example = self.parts.val_set.image_path(0)
        best = self.progress.best_miou
        what = "foreground IoU" if self.parts.spec.task_obj.thresholded else "mIoU"
        miou = f"best validation {what} {best:.4f}" if best >= 0 else "no evaluation yet"
        print(f"\ndone: {miou}; weights in {weights}\n"
              f"predict:  python predict.py --weights {shlex.quote(str(weights))} {shlex.quote(str(example))}\n"
              f"evaluate: python get_miou.py --weights {shlex.quote(str(weights))} "
              f"--data-root {shlex.quote(str(self.options.data_root))}", flush=True)


def run_training(options: TrainOptions) -> int:
    """Start (or join) the process group, train, and leave the group."""
    ctx = init_distributed(options.device)
    try:
        if launched_by_torchrun():
            resolve_start(options, ctx)
        prepare_demo_data(options, ctx)
        return Trainer(options, ctx).fit()
    finally:
        cleanup_distributed()
