"""The training loop behind ``train.py``: setup, the freeze/unfreeze schedule, evaluation, checkpoints, resume.

The run is a sequence of epochs; each belongs to the *frozen* phase (backbone fixed, its
BatchNorm statistics too, ``--freeze-batch-size``) or the *unfrozen* phase. Entering a phase
is one function (:meth:`Trainer.enter_phase`): it (un)freezes, rebuilds the loader for that
phase's batch size, rescales the learning rate and re-wraps DDP. A single optimizer holds all
parameters from the start, as in the original recipe, so its state carries across phases.

Reproducibility: the data order and augmentation of an epoch depend only on
(seed, rank, worker, epoch) (:func:`utils.data.set_loader_epoch`), torch's global generator
(dropout) is re-seeded from (seed, rank, epoch) at every epoch start, and checkpoints hold the
optimizer, scheduler, scaler and generator states. Resuming from ``last.pth`` of a single
process on the CPU therefore gives bitwise the same weights as an uninterrupted run, also after
a Ctrl-C in the middle of an epoch (the checkpoint records how many batches of that epoch were
done); elsewhere (CUDA kernels, several processes) it continues the same schedule and data order.
"""

from __future__ import annotations

import argparse
import math
import random
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nets.deeplabv3_plus import DeepLab, freeze_backbone, unfreeze_backbone
from nets.losses import build_criterion
from utils.callbacks import RunLogger, format_summary, progress
from utils.checkpoint import (
    CHECKPOINT_FORMAT,
    copy_checkpoint,
    load_weights,
    read_weights_file,
    save_checkpoint,
    split_checkpoint,
)
from utils.data import (
    VOC_CLASSES,
    SegmentationDataset,
    build_loader,
    load_label,
    read_class_names,
    set_loader_epoch,
    to_device,
)
from utils.distributed import (
    DistContext,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    convert_sync_bn,
    init_distributed,
    wrap_model,
)
from utils.errors import UserError
from utils.evaluation import iterate_predictions
from utils.metrics import ConfusionMatrix
from utils.predictor import Predictor

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("cos", "step")
# Learning-rate bounds after batch scaling (the original recipe): (lowest, highest) initial lr.
LR_LIMITS = {"sgd": (5e-4, 1e-1), "adam": (3e-4, 5e-4), "adamw": (3e-4, 5e-4)}
REFERENCE_BATCH = 16
DEMO_ROOT = Path("VOCdevkit/demo")
# The CPU demo: a small model input, no freezing (the backbone starts random), no ImageNet file.
DEMO_SETTINGS: dict[str, Any] = {
    "data_root": str(DEMO_ROOT), "backbone": "mobilenet", "downsample_factor": 16, "input_size": [128],
    "pretrained": False, "epochs": 8, "freeze_epochs": 0, "batch_size": 8, "freeze_batch_size": 8,
    "optimizer": "sgd", "lr": 0.2, "weight_decay": 1e-4, "workers": 2, "eval_period": 4, "save_period": 100,
}
DEMO_SAVE_DIR = Path("logs/demo")


def scaled_lr(optimizer: str, batch_size: int, lr: float, min_lr: float) -> tuple[float, float]:
    """The original recipe's batch scaling: ``lr * batch / 16`` clamped to the optimizer's range.

    ``min_lr`` is scaled the same way and clamped to a hundredth of that range.
    """
    low, high = LR_LIMITS[optimizer]
    lr_fit = min(max(batch_size / REFERENCE_BATCH * lr, low), high)
    min_lr_fit = min(max(batch_size / REFERENCE_BATCH * min_lr, low * 1e-2), high * 1e-2)
    return lr_fit, min_lr_fit


class EpochLR:
    """Learning rate as a function of the position in the run, measured in (fractional) epochs.

    ``cos``: quadratic warmup from a tenth of the lr over ``min(max(0.1 E, 1), 3)`` epochs,
    cosine down to ``min_lr``, then ``min_lr`` for the last ``min(max(0.3 E, 1), 15)`` epochs
    (the original's ``yolox_warm_cos_lr``). ``step``: ten equal steps from lr to min_lr.
    The training loop calls :meth:`step` before every iteration with ``epoch + i / n``;
    :meth:`rescale` sets new lr bounds when a phase changes the batch size. Like torch's
    schedulers it has ``state_dict``/``load_state_dict``, so resuming restores it exactly.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, total_epochs: int,
                 lr: float, min_lr: float) -> None:
        if kind not in LR_SCHEDULES:
            raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {kind!r}")
        self.optimizer = optimizer
        self.kind = kind
        self.total_epochs = int(total_epochs)
        self.lr, self.min_lr = float(lr), float(min_lr)
        self.position = 0.0
        self.last_lr = self.lr_at(0.0)

    def rescale(self, lr: float, min_lr: float) -> None:
        """Use new bounds (a phase changed the batch size)."""
        self.lr, self.min_lr = float(lr), float(min_lr)

    def lr_at(self, position: float) -> float:
        """The learning rate at ``position`` epochs into the run."""
        total, lr, min_lr = self.total_epochs, self.lr, self.min_lr
        if self.kind == "step":
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
        progress_ = (position - warmup) / (total - warmup - flat)
        return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress_))

    def step(self, position: float) -> float:
        """Set every parameter group's lr for ``position`` and return it."""
        self.position = float(position)
        self.last_lr = self.lr_at(self.position)
        for group in self.optimizer.param_groups:
            group["lr"] = self.last_lr
        return self.last_lr

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "total_epochs": self.total_epochs, "lr": self.lr, "min_lr": self.min_lr,
                "position": self.position, "last_lr": self.last_lr}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kind = state["kind"]
        self.lr, self.min_lr = float(state["lr"]), float(state["min_lr"])
        self.position, self.last_lr = float(state["position"]), float(state["last_lr"])


def build_optimizer(name: str, params: Sequence[torch.nn.Parameter], lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, Adam (L2 in the gradient) or AdamW (decoupled weight decay)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def median_frequency_weights(dataset: SegmentationDataset, num_classes: int) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus): ``w_c = median(f) / f_c`` over the training labels.

    ``f_c`` is the pixel count of class c divided by the pixel count of the images where c
    occurs (ignore pixels excluded). Classes that never occur get weight 1.
    """
    class_pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for index in range(len(dataset)):
        label = load_label(dataset.label_path(index))
        counts = np.bincount(label.ravel(), minlength=256)[:num_classes].astype(np.int64)
        valid = int(counts.sum())
        class_pixels += counts
        image_pixels[counts > 0] += valid
    present = class_pixels > 0
    weights = np.ones(num_classes, np.float64)
    if present.any():
        freq = class_pixels[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    return torch.tensor(weights, dtype=torch.float32)


def parse_class_weights(text: str | None, num_classes: int, dataset: SegmentationDataset) -> torch.Tensor | None:
    """``--class-weights``: None, ``auto`` (median frequency) or a comma list with one weight per class."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return median_frequency_weights(dataset, num_classes)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--class-weights {text!r}: give 'auto' or comma-separated numbers, e.g. 1,2,2") from None
    if len(values) != num_classes:
        raise UserError(f"--class-weights has {len(values)} values but there are {num_classes} classes; "
                        "give one weight per class (background first)")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"--class-weights {text!r}: weights must be finite and not negative")
    return torch.tensor(values, dtype=torch.float32)


def apply_demo_settings(args: argparse.Namespace, given: set[str]) -> None:
    """``--demo``: use the small CPU configuration (flags only; the data is made by :func:`prepare_demo_data`).

    Flags the user gave explicitly (``given``) keep their values. Without ``--save-dir`` a new
    demo run goes to ``logs/demo``, or the first of ``logs/demo_2``, ``logs/demo_3``, ... that
    holds no run yet, so running the demo again never overwrites an earlier one;
    ``--resume auto`` continues ``logs/demo``, ``--resume PATH`` the folder of PATH.
    """
    from utils.demo_data import DEMO_CLASSES

    for key, value in DEMO_SETTINGS.items():
        if key not in given:
            setattr(args, key, value)
    if "classes" not in given and "num_classes" not in given:
        args.classes = None
        args.num_classes = len(DEMO_CLASSES)
    if "save_dir" not in given:
        if args.resume == "auto":
            args.save_dir = str(DEMO_SAVE_DIR)
        elif not args.resume:  # --resume PATH continues in PATH's folder (validate_args)
            args.save_dir = str(free_demo_dir(DEMO_SAVE_DIR))


def free_demo_dir(base: Path) -> Path:
    """``base``, or the first ``base_2``, ``base_3``, ... without a ``last.pth`` in it."""
    candidate, number = base, 1
    while (candidate / "last.pth").exists():
        number += 1
        candidate = base.with_name(f"{base.name}_{number}")
    return candidate


def prepare_demo_data(args: argparse.Namespace, ctx: DistContext) -> None:
    """``--demo``: write the demo dataset if missing, on the main rank only; the others wait for it.

    Runs after the process group exists so that under torchrun one process writes the files.
    A ``--data-root`` of the user's that already exists is left alone.
    """
    if not args.demo:
        return
    if ctx.is_main and (Path(args.data_root) == DEMO_ROOT or not Path(args.data_root).exists()):
        from utils.demo_data import make_demo_dataset

        make_demo_dataset(args.data_root)
    barrier(ctx)


def validate_args(args: argparse.Namespace, given: set[str]) -> argparse.Namespace:
    """Check every flag before anything heavy happens; fill in derived values (class names, min lr, paths)."""
    if args.demo:
        apply_demo_settings(args, given)
    if args.classes:
        names = read_class_names(args.classes)
        if "num_classes" in given and args.num_classes != len(names):
            raise UserError(f"--num-classes {args.num_classes} contradicts --classes {args.classes} "
                            f"({len(names)} names); drop --num-classes")
        args.num_classes, args.class_names = len(names), names
    else:
        demo_names = None
        if args.demo:
            from utils.demo_data import DEMO_CLASSES

            demo_names = list(DEMO_CLASSES) if args.num_classes == len(DEMO_CLASSES) else None
        args.class_names = demo_names or (list(VOC_CLASSES) if args.num_classes == len(VOC_CLASSES) else None)
    if args.num_classes < 2:
        raise UserError(f"--num-classes {args.num_classes}: need at least 2 (background and one class)")
    if len(args.input_size) not in (1, 2) or min(args.input_size) < 32:
        raise UserError(f"--input-size {' '.join(map(str, args.input_size))}: give H or H W, each at least 32")
    args.input_size = [args.input_size[0], args.input_size[-1]]
    checks = [
        (args.epochs >= 1, f"--epochs {args.epochs}: must be at least 1"),
        (args.freeze_epochs >= 0, f"--freeze-epochs {args.freeze_epochs}: must be 0 or more"),
        (args.freeze_epochs <= args.epochs, f"--freeze-epochs {args.freeze_epochs} is greater than --epochs "
                                            f"{args.epochs}: the frozen phase is part of the total epochs"),
        (args.batch_size >= 2, f"--batch-size {args.batch_size}: must be at least 2 (BatchNorm needs 2 images)"),
        (args.freeze_epochs == 0 or args.freeze_batch_size >= 2,
         f"--freeze-batch-size {args.freeze_batch_size}: must be at least 2 (BatchNorm needs 2 images)"),
        (args.lr > 0 and math.isfinite(args.lr), f"--lr {args.lr}: must be a positive number"),
        (0 <= args.momentum < 1, f"--momentum {args.momentum}: must lie in [0, 1)"),
        (args.weight_decay >= 0, f"--weight-decay {args.weight_decay}: must be 0 or more"),
        (args.save_period >= 1, f"--save-period {args.save_period}: must be at least 1"),
        (args.eval_period >= 1, f"--eval-period {args.eval_period}: must be at least 1"),
        (args.workers >= 0, f"--workers {args.workers}: must be 0 or more"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    if args.min_lr is None:
        args.min_lr = args.lr * 0.01
    if not 0 <= args.min_lr <= args.lr:
        raise UserError(f"--min-lr {args.min_lr}: must lie between 0 and --lr {args.lr}")
    if args.weights and not Path(args.weights).is_file():
        raise UserError(f"--weights {args.weights}: file not found")
    if args.class_weights is not None and args.class_weights.strip().lower() != "auto":
        parse_class_weights(args.class_weights, args.num_classes, None)  # type: ignore[arg-type]
    if args.save_dir is None:
        if args.resume and args.resume != "auto":
            args.save_dir = str(Path(args.resume).parent)
        else:
            args.save_dir = time.strftime("logs/%Y_%m_%d_%H_%M_%S")
    if args.resume == "auto":
        if "save_dir" not in given and not args.demo:
            raise UserError("--resume auto continues the run in --save-dir: give --save-dir (the folder holding "
                            "last.pth), or --resume PATH")
        candidate = Path(args.save_dir) / "last.pth"
        args.resume = str(candidate) if candidate.is_file() else None
        if args.resume is None:
            print(f"--resume auto: no {candidate} yet, starting a new run")
    elif args.resume and not Path(args.resume).is_file():
        raise UserError(f"--resume {args.resume}: file not found (use auto for {args.save_dir}/last.pth)")
    if not args.resume and (Path(args.save_dir) / "last.pth").exists():
        # A new run would replace the checkpoints, metrics.csv, config.json and TensorBoard curves.
        raise UserError(f"--save-dir {args.save_dir} already holds a run (last.pth): continue it with --resume auto "
                        "or choose another --save-dir")
    return args


def resume_command(argv: Sequence[str], save_dir: str | Path, world_size: int) -> str:
    """The command line that continues this run: the same flags plus ``--save-dir DIR --resume auto``."""
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in ("--resume", "--save-dir"):
            skip = True
            continue
        if token.startswith(("--resume=", "--save-dir=")):
            continue
        kept.append(token)
    launcher = f"torchrun --nproc_per_node={world_size} train.py" if world_size > 1 else "python train.py"
    return " ".join([launcher, *map(shlex.quote, kept), "--save-dir", shlex.quote(str(save_dir)),
                     "--resume", "auto"])


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict[str, Any]:
    """Every generator's state as plain tensors/tuples (loadable with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


class StopRequest:
    """Turns the first Ctrl-C (or SIGTERM) into a flag checked between iterations; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this iteration to save last.pth (press Ctrl-C again to abort at once)",
              file=sys.stderr)

    @contextmanager
    def installed(self):
        """Install the handlers in the main thread for the duration of the block."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


class NonFiniteLossError(UserError):
    """The loss became NaN or infinite; the run stops and keeps its last good checkpoint."""


class Trainer:
    """One training run: model, data, optimizer, schedule, evaluation and checkpoints.

    Args:
        args: validated arguments (see :func:`validate_args`).
        ctx: the distributed context (single process when not under torchrun).
    """

    def __init__(self, args: argparse.Namespace, ctx: DistContext) -> None:
        self.args, self.ctx = args, ctx
        self.device = ctx.device
        self.save_dir = Path(args.save_dir)
        self.is_main = ctx.is_main
        self.cuda = self.device.type == "cuda"
        seed_everything(args.seed)
        if args.sync_bn and ctx.enabled and not self.cuda:
            raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm runs on GPUs only); drop it on the CPU")

        size = tuple(args.input_size)
        self.train_set = SegmentationDataset(args.data_root, "train", size, args.num_classes, True, args.class_names)
        self.val_set = SegmentationDataset(args.data_root, "val", size, args.num_classes, False, args.class_names)
        for flag, batch, needed in (("--batch-size", args.batch_size, args.epochs > args.freeze_epochs),
                                    ("--freeze-batch-size", args.freeze_batch_size, args.freeze_epochs > 0)):
            if needed:
                self._check_batch(flag, batch)

        self.config = {
            "backbone": args.backbone, "num_classes": args.num_classes, "class_names": args.class_names,
            "downsample_factor": args.downsample_factor, "input_size": list(args.input_size),
        }
        self.config.update({k: v for k, v in vars(args).items() if k not in self.config and k != "argv"})

        self.net: torch.nn.Module = DeepLab(args.num_classes, args.backbone, pretrained=args.pretrained,
                             downsample_factor=args.downsample_factor)
        self.init_note = "ImageNet backbone" if args.pretrained else "random"
        if args.weights:
            state, _ = split_checkpoint(read_weights_file(args.weights), args.weights)
            report = load_weights(self.net, state, strict=False, source=args.weights)
            if not report.loaded:
                raise UserError(f"--weights {args.weights}: no tensor matches this model "
                                f"({args.backbone}, {args.num_classes} classes)")
            self.init_note = f"{args.weights} ({len(report.loaded)} tensors)"
            if self.is_main:
                print(f"--weights {args.weights}: {report.summary()}")
        self.extra_summary = {}
        self.class_weights = parse_class_weights(args.class_weights, args.num_classes, self.train_set)
        try:
            self.criterion = build_criterion(args.loss, cls_weights=self.class_weights, dice=args.dice)
        except ValueError as exc:
            raise UserError(f"--loss {args.loss}: {exc}") from None

        if args.sync_bn:
            self.net = convert_sync_bn(self.net, ctx)
        self.net.to(self.device)
        if self.cuda:
            self.net.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(args.optimizer, list(self.net.parameters()), args.lr, args.momentum,
                                         args.weight_decay)
        first_batch = args.freeze_batch_size if args.freeze_epochs > 0 else args.batch_size
        self.scheduler = EpochLR(self.optimizer, args.lr_schedule, args.epochs,
                                 *scaled_lr(args.optimizer, first_batch, args.lr, args.min_lr))
        self.amp_dtype = torch.float16 if self.cuda else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=bool(args.amp and self.cuda))

        self.start_epoch, self.start_iteration, self.best_miou = 0, 0, -1.0
        self.history: list[dict[str, Any]] = []
        self.resume_rng: dict[str, Any] | None = None
        if args.resume:
            self._load_resume(args.resume)
        self.frozen: bool | None = None
        self.wrapped = self.net
        self.train_loader = None
        self.val_loader = build_loader(self.val_set, self._per_rank(args.batch_size), False, args.workers,
                                       args.seed, ctx.rank, ctx.world_size)
        self.logger = RunLogger(self.save_dir, enabled=self.is_main, purge_step=self.start_epoch + 1)
        self.stop = StopRequest()
        self._stop_rng: torch.Tensor | None = None

    def _per_rank(self, batch: int) -> int:
        return max(1, batch // self.ctx.world_size)

    def _check_batch(self, flag: str, batch: int) -> None:
        per_rank = self._per_rank(batch)
        available = len(self.train_set) // self.ctx.world_size
        if self.ctx.world_size > 1 and per_rank < 2:
            raise UserError(f"{flag} {batch} over {self.ctx.world_size} processes leaves {per_rank} image per "
                            "process; BatchNorm needs at least 2: raise the batch size")
        if per_rank > available:
            raise UserError(f"{flag} {batch} is larger than the training split ({len(self.train_set)} images in "
                            f"{self.args.data_root}/ImageSets/Segmentation/train.txt"
                            + (f", {available} per process" if self.ctx.world_size > 1 else "")
                            + "): lower it or add images")

    def _load_resume(self, path: str) -> None:
        obj = read_weights_file(path)
        if obj.get("format") != CHECKPOINT_FORMAT or "optimizer" not in obj:
            raise UserError(f"--resume {path} is not a training checkpoint written by train.py (it holds no "
                            "optimizer state); use --weights to start from its weights instead")
        saved = obj.get("config") or {}
        # Checked before any state is loaded: a mismatch must not leave half-restored objects behind.
        for key, flag in (("optimizer", "--optimizer"), ("lr_schedule", "--lr-schedule")):
            if saved.get(key) not in (None, getattr(self.args, key)):
                raise UserError(f"--resume {path} was trained with {flag} {saved[key]}, but this run has {flag} "
                                f"{getattr(self.args, key)}: pass {flag} {saved[key]} to continue it")
        for key, what, hint in (("backbone", "the {} backbone", "pass --backbone {}"),
                                ("num_classes", "{} classes", "pass the same --classes file or --num-classes {}"),
                                ("downsample_factor", "output stride {}", "pass --downsample-factor {}")):
            if saved.get(key) != self.config[key]:
                raise UserError(f"--resume {path} was trained with {what.format(saved.get(key))}, but this run has "
                                f"{what.format(self.config[key])}: {hint.format(saved.get(key))} to continue it, "
                                "or start a new run (--weights loads what fits)")
        load_weights(self.net, obj["model"], strict=True, source=path)
        try:
            self.optimizer.load_state_dict(obj["optimizer"])
        except ValueError as exc:
            raise UserError(f"--resume {path}: its optimizer state does not fit --optimizer "
                            f"{self.args.optimizer} ({exc}); use the optimizer it was trained with") from None
        self.scheduler.load_state_dict(obj["scheduler"])
        self.scheduler.total_epochs = self.args.epochs
        if obj.get("scaler"):
            self.scaler.load_state_dict(obj["scaler"])
        self.start_epoch = int(obj["epoch"])
        self.start_iteration = int(obj.get("iteration", 0))
        self.best_miou = float(obj.get("best_miou", -1.0))
        self.history = [row for row in obj.get("history", []) if int(row["epoch"]) <= self.start_epoch]
        self.resume_rng = obj.get("rng")
        if self.start_epoch >= self.args.epochs:
            raise UserError(f"--resume {path} has already finished {self.start_epoch} epochs; raise --epochs "
                            "to train longer")
        where = f"epoch {self.start_epoch}" + (f", iteration {self.start_iteration}" if self.start_iteration else "")
        self.extra_summary["resume"] = f"{path} ({where} done, best mIoU {self.best_miou:.4f})"

    # ---- phases ----
    def enter_phase(self, frozen: bool) -> None:
        """Switch between the frozen and unfrozen phase: freezing, batch size, lr bounds, loader, DDP wrapper."""
        if frozen == self.frozen:
            return
        self.frozen = frozen
        (freeze_backbone if frozen else unfreeze_backbone)(self.net)
        batch = self.args.freeze_batch_size if frozen else self.args.batch_size
        self.scheduler.rescale(*scaled_lr(self.args.optimizer, batch, self.args.lr, self.args.min_lr))
        self.train_loader = build_loader(self.train_set, self._per_rank(batch), True, self.args.workers,
                                         self.args.seed, self.ctx.rank, self.ctx.world_size)
        # DDP registers only the parameters that require gradients when it is built: build it again.
        self.wrapped = wrap_model(self.net, self.ctx)

    def phase_lrs(self) -> str:
        parts = []
        if self.args.freeze_epochs > 0:
            lr, min_lr = scaled_lr(self.args.optimizer, self.args.freeze_batch_size, self.args.lr, self.args.min_lr)
            parts.append(f"frozen {lr:.3g} -> {min_lr:.3g}")
        if self.args.epochs > self.args.freeze_epochs:
            lr, min_lr = scaled_lr(self.args.optimizer, self.args.batch_size, self.args.lr, self.args.min_lr)
            parts.append(f"unfrozen {lr:.3g} -> {min_lr:.3g}")
        return ", ".join(parts)

    # ---- the loop ----
    def fit(self) -> int:
        """Train from ``start_epoch`` to ``--epochs``; return the exit status (130 after Ctrl-C)."""
        args = self.args
        if self.is_main:
            extra = dict(self.extra_summary, init=self.init_note, num_train=len(self.train_set),
                         num_val=len(self.val_set), lr_note=self.phase_lrs(), device=str(self.device),
                         world_size=self.ctx.world_size, amp_dtype=str(self.amp_dtype).removeprefix("torch."),
                         sync_bn=args.sync_bn and self.ctx.enabled)
            if self.class_weights is not None:
                extra["class_weights"] = ", ".join(f"{w:.3g}" for w in self.class_weights.tolist())
            print(format_summary(self.config, extra), flush=True)
            self.logger.write_config(self.config)
        with self.stop.installed():
            for epoch in range(self.start_epoch, args.epochs):
                self.enter_phase(epoch < args.freeze_epochs)
                skip = self.start_iteration if epoch == self.start_epoch else 0
                started = time.perf_counter()
                loss, images, done = self.train_epoch(epoch, skip)
                if done < len(self.train_loader):
                    return self._interrupted(epoch, done)
                seconds = time.perf_counter() - started
                row: dict[str, Any] = {"epoch": epoch + 1, "phase": "frozen" if self.frozen else "unfrozen",
                                       "lr": f"{self.scheduler.last_lr:.6g}", "train_loss": f"{loss:.5f}",
                                       "seconds": f"{seconds:.1f}", "images_per_s": f"{images / seconds:.2f}"}
                improved = False
                if (epoch + 1) % args.eval_period == 0 or epoch + 1 == args.epochs:
                    scores = self.evaluate(epoch + 1)
                    row.update(scores)
                    improved = scores["miou"] > self.best_miou
                    if improved:
                        self.best_miou = scores["miou"]
                    row = {k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in row.items()}
                self.history.append(row)
                self._save(epoch + 1, improved)
                self.logger.log_epoch(self.history)
        self.logger.close()
        if self.is_main:
            self._print_next_steps()
        return 0

    def train_epoch(self, epoch: int, skip: int = 0) -> tuple[float, int, int]:
        """One pass over the training data; returns (mean loss, images seen, batches done).

        ``skip`` batches are drawn and discarded first (resuming in the middle of an epoch).
        Fewer batches than the loader holds are done only when a stop was requested.
        """
        self.wrapped.train()
        loader = self.train_loader
        set_loader_epoch(loader, epoch)
        # Dropout draws from torch's global generator: make it a function of the epoch.
        torch.manual_seed(int(np.random.SeedSequence([self.args.seed, self.ctx.rank, epoch]).generate_state(1)[0]))
        batches = iter(loader)
        total = len(loader)
        for _ in range(skip):
            next(batches)
        if skip and self.resume_rng is not None:
            restore_rng(self.resume_rng)
        bar = progress(range(skip, total), total=total, desc=f"epoch {epoch + 1}/{self.args.epochs}",
                       enabled=self.is_main)
        bar.update(skip)
        loss_sum, seen, done, tick = 0.0, 0, skip, time.perf_counter()
        for index in bar:
            rng_before = torch.get_rng_state()
            stop_here = self.stop.requested
            batch = None
            if not stop_here:
                try:
                    batch = next(batches)
                except RuntimeError:
                    # Ctrl-C also reaches the loader's workers, which then exit: treat it as the stop.
                    if not self.stop.requested:
                        raise
                    stop_here = True
            loss = None
            if batch is not None:
                images, labels = to_device(*batch, self.device, channels_last=self.cuda)
                lr = self.scheduler.step(epoch + index / total)
                with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.args.amp):
                    logits = self.wrapped(images)
                loss = self.criterion(logits.float(), labels)
            # One host synchronisation per step: the loss value alone, or (DDP) loss and stop flag reduced together.
            if self.ctx.enabled:
                zero = torch.zeros((), dtype=torch.float64, device=self.device)
                stats = torch.stack([zero if loss is None else loss.detach().double(),
                                     torch.full((), float(stop_here), dtype=torch.float64, device=self.device)])
                loss_total, stops = all_reduce_sum(stats, self.ctx).tolist()
                stop_here = stops > 0
                value = loss_total / self.ctx.world_size
            else:
                value = 0.0 if loss is None else loss.item()
            if stop_here:
                self._stop_rng = rng_before
                return loss_sum / max(seen, 1), seen, index
            if not math.isfinite(value):
                raise NonFiniteLossError(self._nan_message(value, epoch, index))
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            seen += images.shape[0] * self.ctx.world_size
            loss_sum += value * images.shape[0] * self.ctx.world_size
            done = index + 1
            now = time.perf_counter()
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{lr:.2e}",
                            img_s=f"{images.shape[0] * self.ctx.world_size / max(now - tick, 1e-9):.1f}",
                            refresh=False)
            tick = now
        bar.close()
        return loss_sum / max(seen, 1), seen, done

    def _nan_message(self, value: float, epoch: int, index: int) -> str:
        last = self.save_dir / "last.pth"
        kept = f"{last} (epoch {self.start_epoch if not self.history else self.history[-1]['epoch']}) is kept" \
            if last.is_file() else "no checkpoint was written yet"
        return (f"the loss became {value} at epoch {epoch + 1}, iteration {index + 1}: training stopped and {kept}. "
                "Lower --lr, train without --amp, or check the labels (values must be class indices or 255)")

    @torch.no_grad()
    def evaluate(self, epoch: int) -> dict[str, float]:
        """Validation loss on the letterboxed val loader and mIoU over the val split at full resolution."""
        net = self.net
        net.eval()
        loss_sum = torch.zeros(2, dtype=torch.float64, device=self.device)
        set_loader_epoch(self.val_loader, 0)
        for images, labels in progress(self.val_loader, len(self.val_loader), "  val loss", self.is_main):
            images, labels = to_device(images, labels, self.device, channels_last=self.cuda)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.args.amp):
                logits = net(images)
            loss_sum[0] += self.criterion(logits.float(), labels).double() * images.shape[0]
            loss_sum[1] += images.shape[0]
        all_reduce_sum(loss_sum, self.ctx)

        # The same pipeline and metric code as get_miou.py: letterbox, predict, resize back, confusion matrix.
        predictor = Predictor(net, self.config, self.device, batch_size=self._per_rank(self.args.batch_size))
        matrix = ConfusionMatrix(self.args.num_classes, device=self.device)
        indices = range(self.ctx.rank, len(self.val_set), self.ctx.world_size)
        samples = []
        for _, image, label, pred in iterate_predictions(predictor, self.val_set.load_pair, indices,
                                                         progress=self.is_main, desc="  val mIoU"):
            matrix.update(pred, label)
            if len(samples) < 3:
                samples.append((image, label, pred))
        matrix.all_reduce()
        scores = matrix.scores()
        net.train()
        self.logger.log_images(epoch, samples)
        val_loss = (loss_sum[0] / loss_sum[1].clamp(min=1)).item()
        result = {"val_loss": val_loss, "miou": float(scores.miou), "mpa": float(scores.mpa),
                  "accuracy": float(scores.accuracy)}
        if self.is_main:
            print(f"epoch {epoch}: val loss {val_loss:.4f}, mIoU {scores.miou:.4f}, mPA {scores.mpa:.4f}, "
                  f"accuracy {scores.accuracy:.4f}", flush=True)
        return result

    # ---- checkpoints ----
    def checkpoint(self, epoch: int, iteration: int = 0, rng: dict[str, Any] | None = None) -> dict[str, Any]:
        """Everything needed to continue the run (and, through ``config``, to use the model)."""
        return {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "iteration": iteration,
            "best_miou": self.best_miou,
            "history": self.history,
            "rng": rng or capture_rng(),
            "config": self.config,
            "format": CHECKPOINT_FORMAT,
        }

    def _save(self, epoch: int, improved: bool) -> None:
        if self.is_main:
            last = save_checkpoint(self.checkpoint(epoch), self.save_dir / "last.pth")
            # Serialise once; the other files are byte copies of last.pth.
            if improved:
                copy_checkpoint(last, self.save_dir / "best.pth")
            if epoch % self.args.save_period == 0:
                copy_checkpoint(last, self.save_dir / f"epoch_{epoch:03d}.pth")
        barrier(self.ctx)

    def _interrupted(self, epoch: int, done: int) -> int:
        if self.is_main:
            rng = capture_rng()
            rng["torch"] = self._stop_rng
            save_checkpoint(self.checkpoint(epoch, done, rng), self.save_dir / "last.pth")
            self.logger.log_epoch(self.history)
            self.logger.close()
            print(f"\ninterrupted: saved {self.save_dir / 'last.pth'} (epoch {epoch + 1}, {done} of "
                  f"{len(self.train_loader)} batches done). Continue exactly where it stopped with:\n  "
                  + resume_command(self.args.argv, self.save_dir, self.ctx.world_size), file=sys.stderr)
        barrier(self.ctx)
        return 130

    def _print_next_steps(self) -> None:
        weights = self.save_dir / ("best.pth" if (self.save_dir / "best.pth").is_file() else "last.pth")
        example = self.val_set.image_path(0)
        miou = f"best validation mIoU {self.best_miou:.4f}" if self.best_miou >= 0 else "no evaluation yet"
        print(f"\ndone: {miou}; weights in {weights}\n"
              f"predict:  python predict.py --weights {shlex.quote(str(weights))} {shlex.quote(str(example))}\n"
              f"evaluate: python get_miou.py --weights {shlex.quote(str(weights))} "
              f"--data-root {shlex.quote(str(self.args.data_root))}", flush=True)


def run_training(args: argparse.Namespace) -> int:
    """Start (or join) the process group, train, and leave the group."""
    ctx = init_distributed(args.device)
    try:
        prepare_demo_data(args, ctx)
        return Trainer(args, ctx).fit()
    finally:
        cleanup_distributed()
