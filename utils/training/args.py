"""Validation of train.py's flags, before anything heavy happens; derived values are filled in.

Every bad value is a :class:`UserError` naming its flag; ``--demo`` settings are applied
first (:mod:`utils.training.demo`), so the demo's defaults are validated like given flags.
Flags that need parsing (the label map, explicit class weights) are parsed once here and kept in
private attributes (``args._label_map``, ``args._class_weights``, ``args._bands``) for the builder; they are not
recorded as settings. What depends on the checkpoint a run resumes from (``--resume auto`` itself, the default and
checks of ``--freeze-epochs``) is settled by :func:`resolve_start`: at the end of validation in
one process, after the process group exists under torchrun (rank 0 decides, every rank follows).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from nets.losses import check_loss
from nets.task import get_task
from utils.data.demo import DEMO_CLASSES
from utils.data.io import VOC_CLASSES, read_class_names
from utils.data.label_map import parse_label_map
from utils.data.raster import parse_bands
from utils.errors import UserError, parse_input_size
from utils.training.demo import apply_demo_settings
from utils.training.distributed import DistContext, launched_by_torchrun
from utils.training.optim import parse_class_weights
from utils.training.resume import recorded_setting, resolve_resume

# The original recipe's frozen phase: 50 of its 100 epochs.
DEFAULT_FREEZE_EPOCHS = 50
# The smallest side of a training input (--input-size, --crop-size).
MIN_TRAIN_SIDE = 32


def _check_crop(args: argparse.Namespace, given: set[str]) -> None:
    """``--crop-size`` / ``--scale-range``: valid values; the crop size becomes the network input size."""
    low, high = args.scale_range
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise UserError(f"--scale-range {low} {high}: give MIN MAX with 0 < MIN <= MAX, e.g. 0.5 2.0")
    if args.crop_size is None:
        if "scale_range" in given:
            raise UserError("--scale-range applies to crop training: add --crop-size H W (or drop it)")
        return
    if min(args.crop_size) < MIN_TRAIN_SIDE:
        raise UserError(f"--crop-size {' '.join(map(str, args.crop_size))}: each side must be at least "
                        f"{MIN_TRAIN_SIDE}")
    if "input_size" in given and args.input_size != list(args.crop_size):
        raise UserError(f"--input-size {' '.join(map(str, args.input_size))} contradicts --crop-size "
                        f"{' '.join(map(str, args.crop_size))}: a crop-trained model's input size is its crop "
                        "size; drop --input-size")
    args.input_size = list(args.crop_size)


def _raise_first_failure(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed ``(ok, message)`` check as a :class:`UserError`."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def validate_args(args: argparse.Namespace, given: set[str]) -> argparse.Namespace:
    """Check every flag before anything heavy happens; fill in derived values (class names, min lr, paths)."""
    if args.demo:
        apply_demo_settings(args, given)
    if args.task == "binary":
        _binary_classes(args, given)
    elif args.classes:
        names = read_class_names(args.classes)
        if "num_classes" in given and args.num_classes != len(names):
            raise UserError(f"--num-classes {args.num_classes} contradicts --classes {args.classes} "
                            f"({len(names)} names); drop --num-classes")
        args.num_classes, args.class_names = len(names), names
    else:
        demo_names = None
        if args.demo:
            demo_names = list(DEMO_CLASSES) if args.num_classes == len(DEMO_CLASSES) else None
        args.class_names = demo_names or (list(VOC_CLASSES) if args.num_classes == len(VOC_CLASSES) else None)
    _loss_settings(args)
    args._bands = parse_bands(args.bands)
    if args.num_classes < 2:
        raise UserError(f"--num-classes {args.num_classes}: need at least 2 (background and one class)")
    args.input_size = parse_input_size(args.input_size, MIN_TRAIN_SIDE)
    _check_crop(args, given)
    checks = [
        (args.epochs >= 1, f"--epochs {args.epochs}: must be at least 1"),
        (args.batch_size >= 2, f"--batch-size {args.batch_size}: must be at least 2 (BatchNorm needs 2 images)"),
        (args.lr > 0 and math.isfinite(args.lr), f"--lr {args.lr}: must be a positive number"),
        (0 <= args.momentum < 1, f"--momentum {args.momentum}: must lie in [0, 1)"),
        (args.weight_decay >= 0, f"--weight-decay {args.weight_decay}: must be 0 or more"),
        (args.save_period >= 1, f"--save-period {args.save_period}: must be at least 1"),
        (args.eval_period >= 1, f"--eval-period {args.eval_period}: must be at least 1"),
        (args.nonfinite_limit >= 1, f"--nonfinite-limit {args.nonfinite_limit}: must be at least 1"),
        (args.workers >= 0, f"--workers {args.workers}: must be 0 or more"),
    ]
    _raise_first_failure(checks)
    if args.min_lr is None:
        args.min_lr = args.lr * 0.01
    if not 0 <= args.min_lr <= args.lr:
        raise UserError(f"--min-lr {args.min_lr}: must lie between 0 and --lr {args.lr}")
    if args.weights and not Path(args.weights).is_file():
        raise UserError(f"--weights {args.weights}: file not found")
    # Parsed once here; "auto" needs the training split, so the builder computes those weights.
    args._class_weights = None
    if args.class_weights is not None and args.class_weights.strip().lower() != "auto":
        args._class_weights = parse_class_weights(args.class_weights, args.num_classes, None)  # type: ignore[arg-type]
    if args.save_dir is None:
        if args.resume and args.resume != "auto":
            args.save_dir = str(Path(args.resume).parent)
        else:
            args.save_dir = time.strftime("logs/%Y_%m_%d_%H_%M_%S")
    if args.resume == "auto" and "save_dir" not in given and not args.demo:
        raise UserError("--resume auto continues the run in --save-dir: give --save-dir (the folder holding "
                        "last.pth), or --resume PATH")
    if not launched_by_torchrun():
        # Under torchrun rank 0 decides once the process group exists (utils.training.trainer).
        resolve_start(args, DistContext())
    return args


def resolve_start(args: argparse.Namespace, ctx: DistContext) -> None:
    """Decide what the run starts from: the checkpoint to resume (rank 0's decision, broadcast), then
    the frozen phase, whose default depends on it, so that every rank takes the same one."""
    resolve_resume(args, ctx)
    resolve_freeze_epochs(args)


def _binary_classes(args: argparse.Namespace, given: set[str]) -> None:
    """``--task binary``: two classes (background, foreground), named by a two-line --classes file."""
    names = read_class_names(args.classes) if args.classes else ["background", "foreground"]
    if len(names) != 2:
        raise UserError(f"--classes {args.classes} lists {len(names)} names; --task binary takes exactly two "
                        "(background first, then the foreground)")
    if "num_classes" in given and args.num_classes != 2:
        raise UserError(f"--num-classes {args.num_classes}: a binary model has 2 classes (background and "
                        "foreground); drop --num-classes")
    args.num_classes, args.class_names = 2, names


def _loss_settings(args: argparse.Namespace) -> None:
    """Default --loss by task, check the spec, and record --label-map in its inline form (for the checkpoint)."""
    if args.loss is None:
        args.loss = "bce" if args.task == "binary" else "ce"
    try:
        check_loss(args.loss, mode=get_task(args.task).loss_mode, boundary_weight=args.boundary_weight,
                   tversky_alpha=args.tversky_alpha, tversky_beta=args.tversky_beta, dice=args.dice)
    except ValueError as exc:
        raise UserError(f"--loss {args.loss}: {exc}") from None
    # The parsed map is kept for the datasets; its inline form is what the spec records.
    args._label_map = parse_label_map(args.label_map)
    args.label_map = None if args._label_map is None else args._label_map.spec()


def resolve_freeze_epochs(args: argparse.Namespace) -> None:
    """Fill in and check ``--freeze-epochs``: by default half the run up to 50 epochs when backbone
    weights are loaded, else 0.

    A resumed run without ``--freeze-epochs`` keeps the value its checkpoint recorded.
    ``args.resume`` must already be decided (:func:`~utils.training.resume.resolve_resume`: a
    checkpoint or None, never ``auto``): reading ``<save-dir>/last.pth`` here instead would let
    nodes without a shared filesystem choose different frozen phases. Freezing only makes sense for
    trained features: an explicit frozen phase on a random backbone (no ``--pretrained``,
    ``--weights`` or resumed checkpoint) is refused.
    """
    if args.resume == "auto":
        raise ValueError("resolve_freeze_epochs needs the resume decision: call resolve_resume first")
    has_weights = bool(args.pretrained or args.weights or args.resume)
    if args.freeze_epochs is None and args.resume:
        # A resumed run keeps the phase plan it started with (its flags are recorded in the checkpoint):
        # the default for "weights loaded" would freeze a run that began from random weights.
        args.freeze_epochs = recorded_setting(args.resume, "freeze_epochs")
    if args.freeze_epochs is None:
        args.freeze_epochs = min(DEFAULT_FREEZE_EPOCHS, args.epochs // 2) if has_weights else 0
    checks = [
        (args.freeze_epochs <= 0 or has_weights,
         f"--freeze-epochs {args.freeze_epochs} would freeze a random backbone: load backbone weights with "
         "--pretrained or --weights PATH, or use --freeze-epochs 0"),
        (args.freeze_epochs >= 0, f"--freeze-epochs {args.freeze_epochs}: must be 0 or more"),
        (args.freeze_epochs <= args.epochs, f"--freeze-epochs {args.freeze_epochs} is greater than --epochs "
                                            f"{args.epochs}: the frozen phase is part of the total epochs"),
        (args.freeze_epochs == 0 or args.freeze_batch_size >= 2,
         f"--freeze-batch-size {args.freeze_batch_size}: must be at least 2 (BatchNorm needs 2 images)"),
    ]
    _raise_first_failure(checks)
