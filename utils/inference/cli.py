"""Command-line flags to typed inference options: the one place predict.py and get_miou.py map them.

Both scripts share the sliding-window flags (:func:`add_slide_arguments`) and build their
predictor through :func:`build_predictor`; everything below this module takes
:class:`~utils.inference.options.InferenceOptions` and friends, never a parsed command line.
"""

from __future__ import annotations

import argparse

from utils.data.raster import parse_bands
from utils.device import resolve_device
from utils.errors import UserError
from utils.inference.options import InferenceOptions, OutputOptions, SlideOptions, VideoOptions
from utils.inference.predictor import Predictor


def add_slide_arguments(parser: argparse.ArgumentParser) -> None:
    """``--slide/--no-slide``, ``--overlap`` and ``--scale``, shared by predict.py and get_miou.py."""
    parser.add_argument("--slide", action=argparse.BooleanOptionalAction, default=None,
                        help="sliding windows of the input size over the image at native resolution instead of "
                        "the letterbox (default: on for models trained with --crop-size)")
    parser.add_argument("--overlap", type=float, metavar="F",
                        help="--slide: share of a window that overlaps the next; stride = round(size x (1 - F)) "
                        "[0.33]")
    parser.add_argument("--scale", type=float, metavar="S", help="--slide: resize the image by S first; the "
                        "result comes back at the original size [1.0]")


def add_bands_argument(parser: argparse.ArgumentParser) -> None:
    """``--bands``: the raster bands to read when the model's spec records none (or others than it records)."""
    parser.add_argument("--bands", metavar="B1,B2,...", help="raster images: the bands to read, 1-based as in GDAL, "
                        "e.g. 4,3,2 (default: those the model was trained on, else all)")


def inference_options(args: argparse.Namespace, progress: bool = True) -> InferenceOptions:
    """The options of predict.py's or get_miou.py's flags (``--device``, ``--precision``, ``--batch-size``,
    ``--threads``, ``--slide/--overlap/--scale``, ``--tta`` [``--tta-scales``], ``--threshold``)."""
    mode = "auto" if args.slide is None else ("slide" if args.slide else "whole")
    if args.slide is False and (args.overlap is not None or args.scale is not None):
        raise UserError("--overlap and --scale apply to sliding windows: add --slide (or drop them)")
    if args.tta and args.slide:
        raise UserError("--tta is not available with sliding windows (--slide is on): drop --tta, or add "
                        "--no-slide to use the letterbox")
    try:
        slide = SlideOptions(SlideOptions.overlap if args.overlap is None else args.overlap,
                             SlideOptions.scale if args.scale is None else args.scale, progress)
    except ValueError as exc:
        flag = "--overlap" if str(exc).startswith("overlap") else "--scale"
        raise UserError(f"{flag} {str(exc).split(' ', 1)[1]}") from None
    scales = getattr(args, "tta_scales", None)
    # The device is resolved here, once: an impossible --device fails before any file is read.
    return InferenceOptions(device=resolve_device(args.device), precision=getattr(args, "precision", "auto"),
                            batch_size=args.batch_size, threads=getattr(args, "threads", None), mode=mode,
                            slide=slide, tta=args.tta,
                            tta_scales=tuple(scales) if scales else InferenceOptions.tta_scales,
                            threshold=args.threshold)


def build_predictor(args: argparse.Namespace, class_names: list[str] | None = None,
                    progress: bool = True) -> Predictor:
    """The PyTorch (``--weights``) or ONNX Runtime (``--onnx``) predictor of the flags, with the model overrides
    (``class_names`` read from ``--classes`` by the caller, ``--num-classes``, ``--downsample-factor``,
    ``--input-size``; ``--threshold`` for binary models only)."""
    options = inference_options(args, progress)
    names = class_names
    overlap_given = args.overlap is not None or args.scale is not None
    try:
        if getattr(args, "onnx", None):
            predictor = Predictor.from_onnx(args.onnx, options, class_names=names, input_size=args.input_size)
        else:
            predictor = Predictor.from_weights(args.weights, options, class_names=names,
                                               num_classes=getattr(args, "num_classes", None),
                                               downsample_factor=args.downsample_factor, input_size=args.input_size)
    except ValueError as exc:
        if "test-time augmentation" in str(exc):
            raise UserError("--tta is not available with sliding windows (--slide is on by default for a model "
                            "trained on crops): drop --tta, or add --no-slide to use the letterbox") from None
        raise
    if predictor.slide is None and overlap_given:
        raise UserError("--overlap and --scale apply to sliding windows: add --slide (or drop them)")
    predictor.use_bands(parse_bands(getattr(args, "bands", None)))
    return predictor


def output_options(args: argparse.Namespace) -> OutputOptions:
    """predict.py's output flags (``--out``, ``--mix``, ``--alpha``, ``--save-mask``, ``--save-prob``,
    ``--prob-bits``, ``--count``)."""
    return OutputOptions(out_dir=args.out, mix=args.mix, alpha=args.alpha, save_mask=args.save_mask,
                         save_prob=args.save_prob, prob_bits=args.prob_bits, count=args.count)


def video_options(args: argparse.Namespace) -> VideoOptions:
    """predict.py's ``--video``, ``--save`` and ``--show``."""
    return VideoOptions(source=str(args.video), save=args.save, show=args.show)
