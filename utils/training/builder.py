"""Building a training run from validated flags: datasets and loaders, model, loss, optimizer, schedule.

:func:`build_run` does the whole set-up once and returns a :class:`RunParts`, which the epoch
(:mod:`utils.training.epoch`), validation (:mod:`utils.training.validate`) and checkpoint
(:mod:`utils.training.state`) functions work on. Each phase (frozen, unfrozen) gets its own
training loader, since the phases train at their own batch sizes; a single optimizer holds all
parameters from the start, as in the original recipe, so its state carries across phases.
"""

from __future__ import annotations

from collections.abc import Callable, Sized
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from nets.init import describe_init
from nets.losses import build_criterion
from nets.pretrained import backbone_weights_path, fetch_backbone_file
from nets.spec import ModelSpec, build_model
from utils.checkpoint import load_weights, read_weights_file, split_checkpoint
from utils.data.crop import CropParams
from utils.data.dataset import SegmentationDataset
from utils.data.label_map import check_unmapped_binary
from utils.data.loader import SeededLoader, build_loader
from utils.data.normalize import Normalization
from utils.data.stats import band_statistics
from utils.device import channels_last_training, cpu_has_native_bf16
from utils.errors import UserError
from utils.training.distributed import DistContext, barrier, convert_sync_bn
from utils.training.optim import build_optimizer, parse_class_weights
from utils.training.options import TrainOptions
from utils.training.rng import seed_everything
from utils.training.schedule import Phase, SchedulePlan, build_scheduler, scaled_lr


@dataclass
class RunParts:
    """What a run trains with. ``loaders`` maps ``frozen`` (True / False) to that phase's training loader."""

    options: TrainOptions
    ctx: DistContext
    spec: ModelSpec
    net: nn.Module
    init_note: str
    train_set: SegmentationDataset
    val_set: SegmentationDataset
    loaders: dict[bool, SeededLoader]
    val_loader: SeededLoader
    class_weights: torch.Tensor | None
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: torch.optim.Optimizer
    plan: SchedulePlan
    scheduler: LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype

    @property
    def settings(self) -> dict[str, Any]:
        """The run's training flags as recorded in its checkpoints (``train``) and config.json."""
        return self.options.settings()

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self.ctx.device

    @property
    def channels_last(self) -> bool:
        """Whether batches and the net are channels-last (:func:`utils.device.channels_last_training`)."""
        return channels_last_training(self.ctx.device)


def per_rank(batch: int, ctx: DistContext) -> int:
    """The images per process of a global batch of ``batch`` images (the remainder is not used)."""
    return max(1, batch // ctx.world_size)


def check_batch(flag: str, batch: int, train_set: Sized, options: TrainOptions, ctx: DistContext) -> int:
    """The global batch that ``batch`` really trains with (``per_rank * world_size``); UserError when it cannot.

    Each process needs 2 images for BatchNorm, or 1 with ``--sync-bn`` (its statistics then span
    every process). A batch that does not divide evenly drops the remainder, said in one line.
    """
    world = ctx.world_size
    each = batch // world
    synced = bool(options.sync_bn and ctx.enabled)
    if each < (1 if synced else 2):
        if synced:
            raise UserError(f"{flag} {batch} is smaller than the {world} processes: use {flag} {world} or more")
        raise UserError(f"{flag} {batch} over {world} processes leaves {each} image(s) per process, and BatchNorm "
                        f"needs 2 without --sync-bn: use {flag} {2 * world} or more, or add --sync-bn (CUDA) "
                        f"for {flag} {world}")
    available = len(train_set) // world
    if each > available:
        raise UserError(f"{flag} {batch} is larger than the training split ({len(train_set)} images in "
                        f"{options.data_root}/ImageSets/Segmentation/train.txt"
                        + (f", {available} per process" if world > 1 else "")
                        + "): lower it or add images")
    used = each * world
    if used != batch and ctx.is_main:
        print(f"{flag} {batch} does not split evenly over {world} processes: {each} per process, {used} in all; "
              f"the learning rate is scaled for batch {used}")
    return used


def fetch_pretrained(options: TrainOptions, ctx: DistContext) -> None:
    """Under torchrun, download the ImageNet backbone file on each node's local rank 0 while the others wait,
    so that no two processes write the same file."""
    if not (options.pretrained and ctx.enabled):
        return
    error = None
    if ctx.local_rank == 0:
        try:
            fetch_backbone_file(options.backbone)
        except UserError as exc:
            error = exc
    barrier(ctx)
    if error is not None:
        raise error
    if not backbone_weights_path(options.backbone).is_file():
        raise UserError(f"rank {ctx.rank}: {backbone_weights_path(options.backbone)} is missing after the download "
                        "on this node's first process: check that model_data/ is writable")


def model_spec(options: TrainOptions, in_channels: int = 3,
               normalization: Normalization | None = None) -> ModelSpec:
    """The spec of the model the flags describe, with the data's input channels and statistics (the binary
    threshold starts at the task's default and is replaced by the one of the best foreground IoU at each
    validation)."""
    normalization = normalization or Normalization()
    return ModelSpec(backbone=options.backbone, num_classes=options.num_classes, task=options.task,
                     head=options.head, downsample_factor=options.downsample_factor,
                     input_size=tuple(options.input_size),
                     crop_size=tuple(options.crop_size) if options.crop_size else None,
                     class_names=options.class_names, label_map=options.label_map, init=options.init,
                     in_channels=in_channels, bands=options.parsed_bands,
                     mean=normalization.mean, std=normalization.std)


def input_normalization(train_set: SegmentationDataset, val_set: SegmentationDataset,
                        is_main: bool) -> Normalization:
    """How the run's input is normalised: 8-bit RGB keeps /255; other data gets per-band statistics over the
    train split (UserError when val's images are of another kind than train's)."""
    if val_set.kind != train_set.kind:
        raise UserError(f"the train and val splits hold different images: {train_set.image_path(0)} has "
                        f"{train_set.channels} band(s) of {train_set.dtype}, {val_set.image_path(0)} "
                        f"{val_set.channels} of {val_set.dtype}; every image of a dataset needs the same bands "
                        "and dtype")
    if train_set.rgb8:
        return Normalization()
    mean, std = band_statistics(train_set.read_image_valid, range(len(train_set)), train_set.channels,
                                progress=is_main, desc="band statistics (train split)")
    if is_main:
        print(f"input: {train_set.channels} band(s) of {train_set.dtype}; per-band mean "
              f"{', '.join(f'{v:.6g}' for v in mean)}, std {', '.join(f'{v:.6g}' for v in std)} (train split)")
    return Normalization(mean, std)


def make_net(spec: ModelSpec, options: TrainOptions, is_main: bool) -> tuple[nn.Module, str]:
    """The DeepLab of ``spec`` with ``--weights`` loaded where they fit; returns it and how it was initialised."""
    net = build_model(spec, pretrained=options.pretrained)
    note = ("ImageNet backbone, head: " if options.pretrained else "") + describe_init(spec.init)
    if options.weights:
        state, _ = split_checkpoint(read_weights_file(options.weights), options.weights)
        report = load_weights(net, state, strict=False, source=options.weights)
        if not report.loaded:
            raise UserError(f"--weights {options.weights}: no tensor matches this model "
                            f"({options.backbone}, {options.num_classes} classes)")
        note = f"{options.weights} ({len(report.loaded)} tensors), the rest: {describe_init(spec.init)}"
        if is_main:
            print(f"--weights {options.weights}: {report.summary()}")
    return net, note


def build_run(options: TrainOptions, ctx: DistContext) -> RunParts:
    """Seed, then build the datasets, loaders, model, loss, optimizer and LR schedule of a run."""
    cuda = ctx.device.type == "cuda"
    seed_everything(options.seed)
    if options.sync_bn and ctx.enabled and not cuda:
        raise UserError("--sync-bn needs CUDA devices (SyncBatchNorm runs on GPUs only); drop it on the CPU")
    if options.amp and not cuda and ctx.is_main and not cpu_has_native_bf16():
        print("--amp: this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 autocast is emulated and "
              "slower than fp32 here; drop --amp on this machine")
    size = tuple(options.input_size)
    label_map = options.parsed_label_map
    crop = CropParams(size, tuple(options.scale_range)) if options.crop_size else None
    train_set = SegmentationDataset(options.data_root, "train", size, options.num_classes, True, options.class_names,
                                    label_map, crop, bands=options.parsed_bands)
    val_set = SegmentationDataset(options.data_root, "val", size, options.num_classes, False, options.class_names,
                                  label_map, bands=options.parsed_bands)
    normalization = input_normalization(train_set, val_set, ctx.is_main)
    train_set.normalization = val_set.normalization = normalization
    if options.task == "binary":
        check_unmapped_binary([train_set.label_path(i) for i in range(len(train_set))], label_map)
    phases = [(True, "frozen", options.freeze_epochs, options.freeze_batch_size, "--freeze-batch-size"),
              (False, "unfrozen", options.epochs - options.freeze_epochs, options.batch_size, "--batch-size")]
    phases = [phase for phase in phases if phase[2] > 0]
    used = {flag: check_batch(flag, batch, train_set, options, ctx) for _, _, _, batch, flag in reversed(phases)}

    spec = model_spec(options, train_set.channels, normalization)
    fetch_pretrained(options, ctx)
    net, init_note = make_net(spec, options, ctx.is_main)
    class_weights = options.parsed_class_weights
    if class_weights is None and options.class_weights is not None:  # "auto": median frequency over the split
        class_weights = parse_class_weights(options.class_weights, options.num_classes, train_set)
    try:
        criterion = build_criterion(options.loss, mode=spec.task_obj.loss_mode, cls_weights=class_weights,
                                    boundary_weight=options.boundary_weight, tversky_alpha=options.tversky_alpha,
                                    tversky_beta=options.tversky_beta, dice=options.dice)
    except ValueError as exc:
        raise UserError(f"--loss {options.loss}: {exc}") from None
    if options.sync_bn:
        net = convert_sync_bn(net, ctx)
    # NHWC where its convolutions are faster: CUDA and AVX-512 CPUs (utils.device.channels_last_training).
    net.to(ctx.device, memory_format=torch.channels_last if channels_last_training(ctx.device)
           else torch.preserve_format)
    if cuda:
        # Every training batch has the same size: let cuDNN pick its fastest algorithms once.
        torch.backends.cudnn.benchmark = True
    optimizer = build_optimizer(options.optimizer, list(net.parameters()), options.lr, options.momentum,
                                options.weight_decay)

    loaders = {frozen: build_loader(train_set, per_rank(batch, ctx), True, options.workers, options.seed, ctx.rank,
                                    ctx.world_size, pin_memory=cuda) for frozen, _, _, batch, _ in phases}
    plan = SchedulePlan(options.lr_schedule, options.epochs, tuple(
        Phase(name, epochs, len(loaders[frozen]),
              *scaled_lr(options.optimizer, used[flag], options.lr, options.min_lr, options.backbone))
        for frozen, name, epochs, _, flag in phases))
    val_loader = build_loader(val_set, per_rank(options.batch_size, ctx), False, options.workers, options.seed,
                              ctx.rank, ctx.world_size, pin_memory=cuda)
    return RunParts(
        options=options, ctx=ctx, spec=spec, net=net, init_note=init_note, train_set=train_set, val_set=val_set,
        loaders=loaders, val_loader=val_loader, class_weights=class_weights, criterion=criterion,
        optimizer=optimizer, plan=plan, scheduler=build_scheduler(optimizer, plan),
        scaler=torch.amp.GradScaler(ctx.device.type, enabled=bool(options.amp and cuda)),
        amp_dtype=torch.float16 if cuda else torch.bfloat16,
    )
