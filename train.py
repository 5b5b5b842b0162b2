"""Train DeepLabV3+ on a dataset in the VOC layout (one process, or many through torchrun).

    python train.py --demo                                  # synthetic data, CPU, a few minutes
    python train.py --data-root VOCdevkit/VOC2007 --pretrained
    python train.py --data-root data/masks --task binary --label-map 255:1 --loss bce+dice
    torchrun --nproc_per_node=4 train.py --pretrained --sync-bn --amp

See the README for the full list of examples; the loop lives in utils/training/.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from nets.deeplabv3_plus import DOWNSAMPLE_FACTORS, HEADS
from nets.init import DEFAULT_INIT, INIT_RULES
from nets.losses import TERMS
from nets.registry import backbone_names
from nets.task import TASKS
from utils.errors import ArgumentParser, run_cli
from utils.training.args import validate_args
from utils.training.optim import OPTIMIZERS
from utils.training.options import TrainOptions
from utils.training.schedule import LR_SCHEDULES
from utils.training.trainer import run_training


def build_parser(track_given: bool = False) -> argparse.ArgumentParser:
    """The train.py parser; with ``track_given`` no defaults are set, so the result holds only given flags."""

    def default(value):
        return argparse.SUPPRESS if track_given else value

    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                            argument_default=argparse.SUPPRESS if track_given else None)
    data = parser.add_argument_group("data and model")
    data.add_argument("--data-root", default=default("VOCdevkit/VOC2007"),
                      help="dataset in the VOC layout [%(default)s]")
    data.add_argument("--task", choices=tuple(TASKS), default=default("multiclass"),
                      help="multiclass: softmax over the classes; binary: one output channel read through a "
                      "sigmoid, labels 0/1 (255 ignore) [%(default)s]")
    data.add_argument("--classes", metavar="FILE", default=default(None),
                      help="class names, one per line, background first (sets the class count; binary: the "
                      "two names of background and foreground)")
    data.add_argument("--label-map", metavar="SRC:DST,...|FILE", default=default(None),
                      help="remap label values as files are read, e.g. 255:1 for 0/255 masks, or 3:1,*:0 "
                      "(* = every other value); or a file of 'SRC DST' lines. Files are never rewritten")
    data.add_argument("--bands", metavar="B1,B2,...", default=default(None),
                      help="raster images: the bands to read, 1-based as in GDAL, e.g. 4,3,2 [all bands]")
    data.add_argument("--num-classes", type=int, default=default(21), help="number of classes [%(default)s]")
    data.add_argument("--backbone", choices=backbone_names(), default=default("mobilenet"), help="[%(default)s]")
    data.add_argument("--downsample-factor", type=int, choices=DOWNSAMPLE_FACTORS, default=default(16),
                      help="backbone output stride [%(default)s]")
    data.add_argument("--head", choices=HEADS, default=default("standard"),
                      help="standard (the original's keys, loads its weights) or separable (atrous separable "
                           "3x3 convolutions in ASPP and the decoder) [%(default)s]")
    data.add_argument("--input-size", type=int, nargs="+", metavar=("H", "W"), default=default([512]),
                      help="network input height [and width] [512]")
    data.add_argument("--crop-size", type=int, nargs=2, metavar=("H", "W"), default=default(None),
                      help="train on random H x W crops of the rescaled image at native resolution (sets the "
                      "input size; predict.py and get_miou.py then default to --slide)")
    data.add_argument("--scale-range", type=float, nargs=2, metavar=("MIN", "MAX"), default=default([0.5, 2.0]),
                      help="--crop-size: random rescale ratio range [0.5 2.0]")
    data.add_argument("--pretrained", action="store_true", default=default(False),
                      help="start from the ImageNet backbone weights (model_data/, downloaded when absent)")
    data.add_argument("--weights", metavar="PATH", default=default(None),
                      help="initial whole-model weights; what matches is loaded and the rest reported")
    data.add_argument("--init", choices=INIT_RULES, default=default(DEFAULT_INIT),
                      help="initialisation of every tensor no file provides (the head always, the backbone "
                      "without --pretrained): normal = the original's N(0, 0.02), kaiming = torchvision's "
                      "MobileNetV2 rule, pytorch = layer defaults [%(default)s]")
    sched = parser.add_argument_group("schedule")
    sched.add_argument("--epochs", type=int, default=default(100), help="total epochs [%(default)s]")
    sched.add_argument("--freeze-epochs", type=int, default=default(None),
                       help="epochs with the backbone frozen, 0 for none [50 with --pretrained or --weights, "
                            "else 0: a random backbone is never frozen]")
    sched.add_argument("--freeze-bn", action="store_true", default=default(False),
                       help="while frozen, also keep the backbone's BatchNorm statistics fixed (by default they "
                            "adapt to the data, as in the original)")
    sched.add_argument("--freeze-batch-size", type=int, default=default(8),
                       help="batch size while frozen (all processes together) [%(default)s]")
    sched.add_argument("--batch-size", type=int, default=default(4),
                       help="batch size after unfreezing (all processes together) [%(default)s]")
    sched.add_argument("--optimizer", choices=OPTIMIZERS, default=default("sgd"), help="[%(default)s]")
    sched.add_argument("--lr", type=float, default=default(7e-3),
                       help="initial learning rate for batch 16, scaled to the batch size [%(default)s]")
    sched.add_argument("--min-lr", type=float, default=default(None), help="final learning rate [lr/100]")
    sched.add_argument("--momentum", type=float, default=default(0.9), help="[%(default)s]")
    sched.add_argument("--weight-decay", type=float, default=default(1e-4), help="[%(default)s]")
    sched.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=default("cos"), help="[%(default)s]")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--loss", metavar="SPEC", default=default(None),
                      help=f"a sum of terms, each optionally weighted: e.g. bce+dice, ce+0.5*lovasz; terms: "
                      f"{', '.join(TERMS)} [ce, binary: bce]")
    loss.add_argument("--dice", action="store_true", default=default(False), help="add the dice loss")
    loss.add_argument("--boundary-weight", action="store_true", default=default(False),
                      help="weight the pixel-wise terms (ce, bce, focal) 3x near object borders")
    loss.add_argument("--tversky-alpha", type=float, default=default(0.5),
                      help="tversky: weight of the false positives [%(default)s]")
    loss.add_argument("--tversky-beta", type=float, default=default(0.5),
                      help="tversky: weight of the false negatives [%(default)s]")
    loss.add_argument("--class-weights", default=default(None), metavar="W0,W1,...|auto",
                      help="per-class loss weights, or auto (median frequency over the training labels)")
    hw = parser.add_argument_group("hardware")
    hw.add_argument("--amp", action="store_true", default=default(False),
                    help="mixed precision: fp16 + gradient scaler on CUDA, bf16 on the CPU")
    hw.add_argument("--nonfinite-limit", type=int, default=default(5), metavar="N",
                    help="with --amp: skip steps whose loss is NaN/inf, stop after N in a row [%(default)s]")
    hw.add_argument("--device", default=default("auto"), help="auto, cpu, cuda, cuda:N [%(default)s]")
    hw.add_argument("--workers", type=int, default=default(4), help="data loader processes [%(default)s]")
    hw.add_argument("--sync-bn", action="store_true", default=default(False),
                    help="synchronised BatchNorm across GPUs under torchrun")
    run = parser.add_argument_group("run")
    run.add_argument("--save-dir", default=default(None), help="output folder [logs/<timestamp>]")
    run.add_argument("--save-period", type=int, default=default(5), help="write epoch_NNN.pth every N [%(default)s]")
    run.add_argument("--eval-period", type=int, default=default(5),
                     help="validation loss and mIoU every N epochs (and after the last) [%(default)s]")
    run.add_argument("--seed", type=int, default=default(11), help="[%(default)s]")
    run.add_argument("--resume", metavar="PATH|auto", default=default(None),
                     help="continue a run from a checkpoint; auto = <save-dir>/last.pth")
    run.add_argument("--demo", action="store_true", default=default(False),
                     help="generate the synthetic demo dataset if missing and train a small CPU configuration")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> TrainOptions:
    """Parse and validate the command line (every bad value is a UserError naming its flag).

    The one place where flags become :class:`~utils.training.options.TrainOptions`: one field per flag.
    """
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    flags = build_parser().parse_args(argv)
    given = set(vars(build_parser(track_given=True).parse_args(argv)))
    return validate_args(TrainOptions(**vars(flags), argv=argv), given)


def main(options: TrainOptions) -> int:
    """Train; returns 0, or 130 after Ctrl-C (last.pth saved)."""
    return run_training(options)


if __name__ == "__main__":
    run_cli(lambda argv: main(parse_args(argv)))
