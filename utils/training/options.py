"""Typed options of training: :class:`TrainOptions`, one field per train.py flag plus what validation derives.

Library code (validation, the builder, the loop, checkpoints) takes these objects, never parsed
command lines: train.py maps its flags to them in one place (``parse_args``), and a notebook builds
them directly, e.g. ``validate_args(TrainOptions(data_root="data/masks", epochs=2))`` then
``run_training`` (:mod:`utils.training.args`, :mod:`utils.training.trainer`).
"""

from __future__ import annotations

import os
from dataclasses import MISSING, Field, dataclass, field, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from nets.init import DEFAULT_INIT

if TYPE_CHECKING:
    import torch

    from utils.data.label_map import LabelMap

# Fields that name files or folders: a ``Path`` given in Python is kept as ``str``, as parsed flags are,
# so that checkpoints (read back with ``weights_only=True``) and config.json can record it.
PATH_FIELDS = ("data_root", "classes", "label_map", "weights", "save_dir", "resume")
# Metadata of the fields that are no train.py flags, and whether checkpoints record them with the flags.
NOT_RECORDED = MappingProxyType({"flag": False, "recorded": False})
RECORDED = MappingProxyType({"flag": False, "recorded": True})


@dataclass
class TrainOptions:
    """How a training run goes: one field per train.py flag, named after it (``--data-root``: ``data_root``),
    with the flag's default, then the values validation fills in.

    :func:`utils.training.args.validate_args` checks the fields and fills in the derived ones; the
    library trains only validated options. Checkpoints and config.json record every flag field and
    ``class_names`` (:meth:`settings`).

    Data and model:
        data_root: dataset in the VOC layout.
        task: ``multiclass`` (softmax over the classes) or ``binary`` (one output channel read through a
            sigmoid, labels 0/1, 255 ignored).
        classes: file of class names, one per line, background first (sets the class count).
        label_map: label remapping as files are read: inline ``SRC:DST,...`` (``*`` = every other value) or
            a file of ``SRC DST`` lines; after validation its inline form.
        bands: raster images: the bands to read, 1-based as in GDAL, e.g. ``"4,3,2"`` (None: all bands).
        num_classes: number of classes (a ``classes`` file or ``task="binary"`` sets it).
        backbone: backbone name (:func:`nets.registry.backbone_names`).
        downsample_factor: backbone output stride (8 or 16).
        head: ``standard`` or ``separable`` (atrous separable 3x3 convolutions in ASPP and the decoder).
        input_size: network input ``[H]`` or ``[H, W]``; after validation always ``[H, W]``.
        crop_size: ``[H, W]`` random crops of the rescaled image at native resolution (sets the input size).
        scale_range: with ``crop_size``: the random rescale ratio range ``[MIN, MAX]``.
        pretrained: start from the ImageNet backbone weights.
        weights: initial whole-model weights; what matches is loaded.
        init: initialisation of every tensor no file provides (:data:`nets.init.INIT_RULES`).

    Schedule:
        epochs: total epochs.
        freeze_epochs: epochs with the backbone frozen (None: 50, at most half the run, when weights are
            loaded, else 0; a resumed run keeps the value its checkpoint recorded).
        freeze_bn: while frozen, also keep the backbone's BatchNorm statistics fixed.
        freeze_batch_size: batch size while frozen (all processes together).
        batch_size: batch size after unfreezing (all processes together).
        optimizer: ``sgd``, ``adam`` or ``adamw`` (:data:`utils.training.optim.OPTIMIZERS`).
        lr: initial learning rate for batch 16, scaled to the batch size.
        min_lr: final learning rate (None: ``lr / 100``).
        momentum: SGD's (Nesterov) momentum, Adam's and AdamW's beta1.
        weight_decay: weight decay.
        lr_schedule: ``cos`` or ``step`` (:data:`utils.training.schedule.LR_SCHEDULES`).

    Loss:
        loss: a sum of optionally weighted terms, e.g. ``bce+dice`` (None: ``ce``, binary: ``bce``).
        dice: add the dice loss.
        boundary_weight: weight the pixel-wise terms 3x near object borders.
        tversky_alpha: tversky: weight of the false positives.
        tversky_beta: tversky: weight of the false negatives.
        class_weights: per-class loss weights ``"W0,W1,..."``, or ``"auto"`` (median frequency).

    Hardware:
        amp: mixed precision (fp16 with a gradient scaler on CUDA, bf16 on the CPU).
        nonfinite_limit: with ``amp``: skip steps whose loss is NaN/inf, stop after this many in a row.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        workers: data loader processes.
        sync_bn: synchronised BatchNorm across GPUs under torchrun.

    Run:
        save_dir: output folder (None: ``logs/<timestamp>``, or the folder of ``resume``).
        save_period: write ``epoch_NNN.pth`` every this many epochs.
        eval_period: validation loss and mIoU every this many epochs (and after the last).
        seed: the run's seed.
        resume: a checkpoint to continue, or ``auto`` (``<save_dir>/last.pth``); after validation the
            checkpoint the run continues from, or None for a new run.
        demo: the synthetic demo dataset and a small CPU configuration (fields not given keep the demo's).

    Not flags:
        argv: the command line the options were parsed from (empty when built in Python); the resume
            command printed after Ctrl-C repeats it. Not recorded.
        class_names: the class names (from ``classes``, the task, or the VOC / demo names for their class
            counts; None otherwise). Filled in by validation; recorded with the flags.
        parsed_label_map: ``label_map`` parsed, for the datasets. Filled in by validation; not recorded.
        parsed_class_weights: explicit ``class_weights`` parsed (None for ``auto``, which the builder
            computes over the training split). Filled in by validation; not recorded.
        parsed_bands: ``bands`` parsed, e.g. ``(4, 3, 2)``. Filled in by validation; not recorded.
    """

    data_root: str = "VOCdevkit/VOC2007"
    task: str = "multiclass"
    classes: str | None = None
    label_map: str | None = None
    bands: str | None = None
    num_classes: int = 21
    backbone: str = "mobilenet"
    downsample_factor: int = 16
    head: str = "standard"
    input_size: list[int] = field(default_factory=lambda: [512])
    crop_size: list[int] | None = None
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    pretrained: bool = False
    weights: str | None = None
    init: str = DEFAULT_INIT
    epochs: int = 100
    freeze_epochs: int | None = None
    freeze_bn: bool = False
    freeze_batch_size: int = 8
    batch_size: int = 4
    optimizer: str = "sgd"
    lr: float = 7e-3
    min_lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_schedule: str = "cos"
    loss: str | None = None
    dice: bool = False
    boundary_weight: bool = False
    tversky_alpha: float = 0.5
    tversky_beta: float = 0.5
    class_weights: str | None = None
    amp: bool = False
    nonfinite_limit: int = 5
    device: str = "auto"
    workers: int = 4
    sync_bn: bool = False
    save_dir: str | None = None
    save_period: int = 5
    eval_period: int = 5
    seed: int = 11
    resume: str | None = None
    demo: bool = False
    argv: list[str] = field(default_factory=list, metadata=NOT_RECORDED)
    class_names: list[str] | None = field(default=None, metadata=RECORDED)
    parsed_label_map: LabelMap | None = field(default=None, compare=False, metadata=NOT_RECORDED)
    parsed_class_weights: torch.Tensor | None = field(default=None, compare=False, metadata=NOT_RECORDED)
    parsed_bands: tuple[int, ...] | None = field(default=None, compare=False, metadata=NOT_RECORDED)

    def __post_init__(self) -> None:
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
        # train.py's parser refuses these already; options built in Python get the same refusal here,
        # naming the field, instead of a failure wherever the value is first used.
        for name, valid in field_choices().items():
            if getattr(self, name) not in valid:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of: {', '.join(map(str, valid))}")

    def settings(self) -> dict[str, Any]:
        """The run's settings as checkpoints (``train``) and config.json record them: every flag field and
        ``class_names``, in field order."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("recorded", True)}

    def changed(self) -> set[str]:
        """The flag fields whose values differ from their defaults: what validation takes as given for
        options built in Python (train.py passes the flags given on its command line instead)."""
        return {f.name for f in flag_fields() if getattr(self, f.name) != _default(f)}


def field_choices() -> dict[str, tuple[Any, ...]]:
    """The fields with a fixed set of values and those values, as train.py's parser offers them."""
    from nets.deeplabv3_plus import DOWNSAMPLE_FACTORS, HEADS
    from nets.init import INIT_RULES
    from nets.registry import backbone_names
    from nets.task import TASKS
    from utils.training.optim import OPTIMIZERS
    from utils.training.schedule import LR_SCHEDULES

    return {"task": tuple(TASKS), "backbone": tuple(backbone_names()), "downsample_factor": tuple(DOWNSAMPLE_FACTORS),
            "head": tuple(HEADS), "init": tuple(INIT_RULES), "optimizer": tuple(OPTIMIZERS),
            "lr_schedule": tuple(LR_SCHEDULES)}


def flag_fields() -> list[Field[Any]]:
    """The fields of :class:`TrainOptions` that are train.py flags, in the parser's order."""
    return [f for f in fields(TrainOptions) if f.metadata.get("flag", True)]


def _default(spec: Field[Any]) -> Any:
    """The default value of the dataclass field ``spec``."""
    return spec.default_factory() if spec.default_factory is not MISSING else spec.default
