"""Validation of train.py's flags, before anything heavy happens; derived values are filled in.

Every bad value is a :class:`UserError` naming its flag; ``--demo`` settings are applied
first (:mod:`utils.training.demo`), so the demo's defaults are validated like given flags.
Flags that need parsing (the label map, explicit class weights, the bands) are parsed once here into
the ``parsed_*`` fields of :class:`~utils.training.options.TrainOptions` for the builder; they are not
recorded as settings. What depends on the checkpoint a run resumes from (``--resume auto`` itself, the default and
checks of ``--freeze-epochs``) is settled by :func:`resolve_start`: at the end of validation in
one process, after the process group exists under torchrun (rank 0 decides, every rank follows).
"""

from __future__ import annotations

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
from utils.training.options import TrainOptions
from utils.training.resume import recorded_setting, resolve_resume

# The original recipe's frozen phase: 50 of its 100 epochs.
DEFAULT_FREEZE_EPOCHS = 50
# The smallest side of a training input (--input-size, --crop-size).
MIN_TRAIN_SIDE = 32


def _check_crop(options: TrainOptions, given: set[str]) -> None:
    """``--crop-size`` / ``--scale-range``: valid values; the crop size becomes the network input size."""
    low, high = options.scale_range
    if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
        raise UserError(f"--scale-range {low} {high}: give MIN MAX with 0 < MIN <= MAX, e.g. 0.5 2.0")
    if options.crop_size is None:
        if "scale_range" in given:
            raise UserError("--scale-range applies to crop training: add --crop-size H W (or drop it)")
        return
    if min(options.crop_size) < MIN_TRAIN_SIDE:
        raise UserError(f"--crop-size {' '.join(map(str, options.crop_size))}: each side must be at least "
                        f"{MIN_TRAIN_SIDE}")
    if "input_size" in given and options.input_size != list(options.crop_size):
        raise UserError(f"--input-size {' '.join(map(str, options.input_size))} contradicts --crop-size "
                        f"{' '.join(map(str, options.crop_size))}: a crop-trained model's input size is its crop "
                        "size; drop --input-size")
    options.input_size = list(options.crop_size)


def _raise_first_failure(checks: list[tuple[bool, str]]) -> None:
    """Raise the message of the first failed ``(ok, message)`` check as a :class:`UserError`."""
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def validate_args(options: TrainOptions, given: set[str] | None = None) -> TrainOptions:
    """Check every flag before anything heavy happens; fill in derived values (class names, min lr, paths).

    ``given`` names the flags given explicitly (``--demo`` keeps their values, some checks depend on them);
    None, for options built in Python: the fields that differ from their defaults
    (:meth:`~utils.training.options.TrainOptions.changed`). The options are completed in place and returned.
    """
    if given is None:
        given = options.changed()
    if options.demo:
        apply_demo_settings(options, given)
    if options.task == "binary":
        _binary_classes(options, given)
    elif options.classes:
        names = read_class_names(options.classes)
        if "num_classes" in given and options.num_classes != len(names):
            raise UserError(f"--num-classes {options.num_classes} contradicts --classes {options.classes} "
                            f"({len(names)} names); drop --num-classes")
        options.num_classes, options.class_names = len(names), names
    else:
        demo_names = None
        if options.demo:
            demo_names = list(DEMO_CLASSES) if options.num_classes == len(DEMO_CLASSES) else None
        options.class_names = demo_names or (list(VOC_CLASSES) if options.num_classes == len(VOC_CLASSES) else None)
    _loss_settings(options)
    options.parsed_bands = parse_bands(options.bands)
    if options.num_classes < 2:
        raise UserError(f"--num-classes {options.num_classes}: need at least 2 (background and one class)")
    options.input_size = parse_input_size(options.input_size, MIN_TRAIN_SIDE)
    _check_crop(options, given)
    checks = [
        (options.epochs >= 1, f"--epochs {options.epochs}: must be at least 1"),
        (options.batch_size >= 2, f"--batch-size {options.batch_size}: must be at least 2 (BatchNorm needs 2 images)"),
        (options.lr > 0 and math.isfinite(options.lr), f"--lr {options.lr}: must be a positive number"),
        (0 <= options.momentum < 1, f"--momentum {options.momentum}: must lie in [0, 1)"),
        (options.weight_decay >= 0, f"--weight-decay {options.weight_decay}: must be 0 or more"),
        (options.save_period >= 1, f"--save-period {options.save_period}: must be at least 1"),
        (options.eval_period >= 1, f"--eval-period {options.eval_period}: must be at least 1"),
        (options.nonfinite_limit >= 1, f"--nonfinite-limit {options.nonfinite_limit}: must be at least 1"),
        (options.workers >= 0, f"--workers {options.workers}: must be 0 or more"),
    ]
    _raise_first_failure(checks)
    if options.min_lr is None:
        options.min_lr = options.lr * 0.01
    if not 0 <= options.min_lr <= options.lr:
        raise UserError(f"--min-lr {options.min_lr}: must lie between 0 and --lr {options.lr}")
    if options.weights and not Path(options.weights).is_file():
        raise UserError(f"--weights {options.weights}: file not found")
    # Parsed once here; "auto" needs the training split, so the builder computes those weights.
    weights = options.class_weights
    options.parsed_class_weights = None
    if weights is not None and weights.strip().lower() != "auto":
        options.parsed_class_weights = parse_class_weights(weights, options.num_classes, None)  # type: ignore[arg-type]
    if options.save_dir is None:
        if options.resume and options.resume != "auto":
            options.save_dir = str(Path(options.resume).parent)
        else:
            options.save_dir = time.strftime("logs/%Y_%m_%d_%H_%M_%S")
    if options.resume == "auto" and "save_dir" not in given and not options.demo:
        raise UserError("--resume auto continues the run in --save-dir: give --save-dir (the folder holding "
                        "last.pth), or --resume PATH")
    if not launched_by_torchrun():
        # Under torchrun rank 0 decides once the process group exists (utils.training.trainer).
        resolve_start(options, DistContext())
    return options


def resolve_start(options: TrainOptions, ctx: DistContext) -> None:
    """Decide what the run starts from: the checkpoint to resume (rank 0's decision, broadcast), then
    the frozen phase, whose default depends on it, so that every rank takes the same one."""
    resolve_resume(options, ctx)
    resolve_freeze_epochs(options)


def _binary_classes(options: TrainOptions, given: set[str]) -> None:
    """``--task binary``: two classes (background, foreground), named by a two-line --classes file."""
    names = read_class_names(options.classes) if options.classes else ["background", "foreground"]
    if len(names) != 2:
        raise UserError(f"--classes {options.classes} lists {len(names)} names; --task binary takes exactly two "
                        "(background first, then the foreground)")
    if "num_classes" in given and options.num_classes != 2:
        raise UserError(f"--num-classes {options.num_classes}: a binary model has 2 classes (background and "
                        "foreground); drop --num-classes")
    options.num_classes, options.class_names = 2, names


def _loss_settings(options: TrainOptions) -> None:
    """Default --loss by task, check the spec, and record --label-map in its inline form (for the checkpoint)."""
    if options.loss is None:
        options.loss = "bce" if options.task == "binary" else "ce"
    try:
        check_loss(options.loss, mode=get_task(options.task).loss_mode, boundary_weight=options.boundary_weight,
                   tversky_alpha=options.tversky_alpha, tversky_beta=options.tversky_beta, dice=options.dice)
    except ValueError as exc:
        raise UserError(f"--loss {options.loss}: {exc}") from None
    # The parsed map is kept for the datasets; its inline form is what the spec records.
    options.parsed_label_map = parse_label_map(options.label_map)
    options.label_map = None if options.parsed_label_map is None else options.parsed_label_map.spec()


def resolve_freeze_epochs(options: TrainOptions) -> None:
    """Fill in and check ``--freeze-epochs``: by default half the run up to 50 epochs when backbone
    weights are loaded, else 0.

    A resumed run without ``--freeze-epochs`` keeps the value its checkpoint recorded.
    ``options.resume`` must already be decided (:func:`~utils.training.resume.resolve_resume`: a
    checkpoint or None, never ``auto``): reading ``<save-dir>/last.pth`` here instead would let
    nodes without a shared filesystem choose different frozen phases. Freezing only makes sense for
    trained features: an explicit frozen phase on a random backbone (no ``--pretrained``,
    ``--weights`` or resumed checkpoint) is refused.
    """
    if options.resume == "auto":
        raise ValueError("resolve_freeze_epochs needs the resume decision: call resolve_resume first")
    has_weights = bool(options.pretrained or options.weights or options.resume)
    if options.freeze_epochs is None and options.resume:
        # A resumed run keeps the phase plan it started with (its flags are recorded in the checkpoint):
        # the default for "weights loaded" would freeze a run that began from random weights.
        options.freeze_epochs = recorded_setting(options.resume, "freeze_epochs")
    if options.freeze_epochs is None:
        options.freeze_epochs = min(DEFAULT_FREEZE_EPOCHS, options.epochs // 2) if has_weights else 0
    checks = [
        (options.freeze_epochs <= 0 or has_weights,
         f"--freeze-epochs {options.freeze_epochs} would freeze a random backbone: load backbone weights with "
         "--pretrained or --weights PATH, or use --freeze-epochs 0"),
        (options.freeze_epochs >= 0, f"--freeze-epochs {options.freeze_epochs}: must be 0 or more"),
        (options.freeze_epochs <= options.epochs,
         f"--freeze-epochs {options.freeze_epochs} is greater than --epochs {options.epochs}: the frozen phase "
         "is part of the total epochs"),
        (options.freeze_epochs == 0 or options.freeze_batch_size >= 2,
         f"--freeze-batch-size {options.freeze_batch_size}: must be at least 2 (BatchNorm needs 2 images)"),
    ]
    _raise_first_failure(checks)
