"""Evaluate a DeepLabV3+ model on a split: mIoU, mPA, accuracy, fwIoU, per-class table and plots.

Examples::

    python get_miou.py --weights logs/best.pth                       # predict VOC2007 val and score it
    python get_miou.py --weights logs/best.pth --tta                 # flip + scales 0.75/1/1.25
    python get_miou.py --weights logs/best.pth --mode predict        # only write the index PNGs
    python get_miou.py --mode eval --classes model_data/classes.txt  # score PNGs already in --pred-dir
    python get_miou.py --weights logs/best.pth --threshold 0.4       # binary model: another threshold
    python get_miou.py --onnx model_int8.onnx                        # an ONNX export (fp32 or int8), scored alike

Modes: ``predict`` writes one index PNG per image (original resolution, palette mode, pixel
value = class index) into ``--pred-dir``; ``eval`` scores the PNGs in ``--pred-dir`` against
``SegmentationClass``; ``all`` (default) predicts and scores in memory, and also writes the
PNGs so that ``--mode eval`` can re-score them later. The report goes to ``--out``.

A binary model (``train.py --task binary``) is also scored on its foreground alone: IoU, Dice,
precision, recall and pixel accuracy at its threshold, pixels pooled over the split, plus a
sweep over thresholds 0.05..0.95 (table, ``threshold_sweep.png``, ``sweep`` in metrics.json).
Labels are remapped by ``--label-map``, by default the one the model was trained with.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from nets.deeplabv3_plus import DOWNSAMPLE_FACTORS
from nets.spec import ModelSpec
from utils.checkpoint import read_spec, read_weights_file, split_checkpoint
from utils.data.io import default_class_names, read_class_names
from utils.data.label_map import LabelMap, check_unmapped_binary, parse_label_map
from utils.errors import UserError, parse_input_size, run_cli
from utils.evaluation.confusion import ConfusionMatrix
from utils.evaluation.report import format_summary, format_table, write_report
from utils.evaluation.scores import compute_scores
from utils.evaluation.split import predict_split, score_split, split_label_paths
from utils.evaluation.threshold import (
    SWEEP_THRESHOLDS,
    ThresholdSweep,
    binary_summary,
    format_binary,
    format_sweep,
    sweep_rows,
    threshold_arg,
)
from utils.inference.backends import OnnxBackend
from utils.inference.cli import add_bands_argument, add_slide_arguments, build_predictor


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"{text!r}: give one or more positive scales, e.g. 0.75,1.0,1.25")
    return scales


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line (``argv`` without the program name; None reads ``sys.argv``)."""
    parser = argparse.ArgumentParser(description="Evaluate a DeepLabV3+ model: mIoU, mPA, accuracy, per-class "
                                     "table, plots and metrics.json.")
    parser.add_argument("--weights", help="checkpoint from train.py or an original release .pth "
                        "(needed by --mode all/predict; in eval mode only used for the class names)")
    parser.add_argument("--onnx", metavar="PATH", help="score this ONNX export (fp32 or int8, spec from its "
                        "metadata) with ONNX Runtime instead of --weights")
    parser.add_argument("--data-root", default="VOCdevkit/VOC2007",
                        help="dataset in the VOC layout (default: %(default)s)")
    parser.add_argument("--split", default="val", help="split file ImageSets/Segmentation/<split>.txt "
                        "(default: %(default)s)")
    parser.add_argument("--mode", choices=("all", "predict", "eval"), default="all",
                        help="all: predict and score (default); predict: only write PNGs; "
                        "eval: score the PNGs in --pred-dir")
    parser.add_argument("--out", default="miou_out", help="report folder (default: %(default)s)")
    parser.add_argument("--pred-dir", help="prediction PNGs (default: <out>/detection-results)")
    parser.add_argument("--classes", metavar="FILE", help="class names, one per line, background first "
                        "(default: from the checkpoint; eval without --weights: the 21 VOC classes)")
    parser.add_argument("--num-classes", type=_positive, help="number of classes when there is no --classes "
                        "file (default: from the checkpoint)")
    parser.add_argument("--input-size", type=int, nargs="+", metavar=("H", "W"),
                        help="network input size and --slide window (default: the checkpoint's, else 512 512): "
                        "a bare state dict trained at another size is scored at its own size")
    parser.add_argument("--downsample-factor", type=int, choices=DOWNSAMPLE_FACTORS,
                        help="backbone output stride (default: the checkpoint's, else 16)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--batch-size", type=_positive, default=4,
                        help="images per forward pass (default: %(default)s)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average horizontal flip and --tta-scales")
    parser.add_argument("--tta-scales", type=_scales, default=(0.75, 1.0, 1.25), metavar="S1,S2,...",
                        help="input-size scales for --tta (default: 0.75,1.0,1.25)")
    add_slide_arguments(parser)
    add_bands_argument(parser)
    parser.add_argument("--workers", type=_positive, help="threads that decode PNGs in eval mode "
                        "(default: the CPU count)")
    parser.add_argument("--threshold", type=threshold_arg, metavar="P",
                        help="binary models: foreground where the probability reaches P (default: the "
                        "checkpoint's threshold)")
    parser.add_argument("--label-map", metavar="SRC:DST,...|FILE",
                        help="remap label values as they are read, e.g. 255:1 (default: the checkpoint's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    args.input_size = parse_input_size(args.input_size)
    return args


def _flag_class_names(args: argparse.Namespace) -> list[str] | None:
    """Class names given on the command line (--classes, checked against --num-classes), or None."""
    if args.classes is None:
        return None
    names = read_class_names(args.classes)
    if args.num_classes is not None and args.num_classes != len(names):
        raise UserError(f"--classes {args.classes} lists {len(names)} classes but --num-classes is "
                        f"{args.num_classes}; drop one of the two or make them agree")
    return names


def _checkpoint_spec(weights: str, num_classes: int | None, names: list[str] | None,
                     threshold: float | None) -> ModelSpec:
    """The checkpoint's spec for eval mode with --weights, read without building the model."""
    state, stored = split_checkpoint(read_weights_file(weights), weights)
    return read_spec(state, stored, weights, num_classes=num_classes, class_names=names, threshold=threshold)


def _label_map(args: argparse.Namespace, spec: ModelSpec | None) -> LabelMap | None:
    """--label-map, else the map the checkpoint was trained with (None: labels as they are). A binary model
    without either is refused on 0/255 masks (255 means 'ignore'), as train.py refuses them."""
    if args.label_map is not None:
        return parse_label_map(args.label_map)
    label_map = parse_label_map(spec.label_map if spec else None)
    if label_map is not None:
        print(f"labels remapped by the checkpoint's --label-map {label_map.spec()}")
    elif spec is not None and spec.task_obj.thresholded:
        check_unmapped_binary(split_label_paths(Path(args.data_root), args.split), None)
    return label_map


def main(args: argparse.Namespace) -> int:
    """Predict and/or score the split as ``args.mode`` says, print the table and write the report; return 0.

    Raises :class:`UserError` for anything the user can fix (missing weights or predictions,
    class lists that disagree, a --pred-dir that is the dataset's own label or image folder).
    """
    out = Path(args.out)
    pred_dir = Path(args.pred_dir) if args.pred_dir else out / "detection-results"
    if args.weights and args.onnx:
        raise UserError(f"--weights {args.weights} and --onnx {args.onnx} name two models: give one of them")
    names = _flag_class_names(args)
    sweep = None

    if args.mode == "eval":
        spec: ModelSpec | None = None
        if args.weights:
            spec = _checkpoint_spec(args.weights, args.num_classes, names, args.threshold)
            names = list(spec.class_names or default_class_names(spec.num_classes))
        elif args.onnx:
            spec = OnnxBackend(args.onnx).resolved_spec(names, threshold=args.threshold)
            names = list(spec.class_names or default_class_names(spec.num_classes))
        elif names is None:
            names = default_class_names(args.num_classes or 21)
        matrix = score_split(args.data_root, args.split, pred_dir, len(names), workers=args.workers,
                             label_map=_label_map(args, spec))
        print(f"scored {pred_dir} against {Path(args.data_root) / 'SegmentationClass'} ({args.split} split)")
    else:
        if not (args.weights or args.onnx):
            raise UserError(f"--mode {args.mode} needs --weights (a checkpoint from train.py or an original .pth) "
                            "or --onnx (an export)")
        predictor = build_predictor(args, names, progress=not args.no_progress)
        spec = predictor.spec
        names = predictor.class_names
        # Masks arrive on the host as uint8 arrays; numpy counts them fastest there.
        confusion = ConfusionMatrix(predictor.num_classes) if args.mode == "all" else None
        if confusion is not None and predictor.task.thresholded:
            sweep = ThresholdSweep(SWEEP_THRESHOLDS, device=predictor.device)
        label_map = _label_map(args, spec) if confusion is not None else None
        count = predict_split(predictor, args.data_root, args.split, pred_dir, confusion,
                              progress=not args.no_progress, label_map=label_map, sweep=sweep)
        print(f"wrote {count} prediction PNG(s) to {pred_dir}")
        if confusion is None:
            return 0
        matrix = confusion.numpy()

    scores = compute_scores(matrix)
    print(format_table(scores, names))
    print(format_summary(scores))
    extra = None
    if spec is not None and spec.task_obj.thresholded:
        extra = binary_summary(scores, args.threshold if args.threshold is not None else spec.threshold)
        print(format_binary(extra))
        if sweep is not None:
            extra["sweep"] = sweep_rows(sweep)
            print(format_sweep(extra["sweep"], extra["threshold"]))
    paths = write_report(scores, matrix, names, out, extra=extra)
    print(f"report: {out / 'metrics.json'}, confusion_matrix.csv/.png, mIoU/mPA/Recall/Precision.png"
          + (", threshold_sweep.png" if "sweep" in paths else ""))
    return 0


if __name__ == "__main__":
    run_cli(lambda argv: main(parse_args(argv)))
