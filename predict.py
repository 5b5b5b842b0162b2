"""Segment images, folders, videos or a camera with a trained DeepLabV3+; FPS benchmark; ONNX export/run.

Examples::

    python predict.py --weights logs/best.pth img/street.jpg          # -> img_out/street.jpg
    python predict.py --weights logs/best.pth photos/ --out results    # folders recursively, structure kept
    python predict.py --weights logs/best.pth                          # asks for file names
    python predict.py --weights logs/best.pth --video clip.mp4 --save out.mp4
    python predict.py --weights logs/best.pth --video 0 --show         # camera 0
    python predict.py --weights logs/best.pth --fps 100
    python predict.py --weights logs/best.pth --export-onnx model.onnx --dynamic
    python predict.py --onnx model.onnx img/street.jpg
    python predict.py --weights logs/best.pth --export-onnx int8.onnx --int8 --calib-data VOCdevkit/VOC2007
    python predict.py --weights logs/best.pth photos/ --save-prob       # + <name>_prob.png (probabilities)
    python predict.py --weights logs/best.pth scene.tif --polygons      # GeoTIFF scene -> img_out/scene.tif + .geojson

All modes share :class:`utils.inference.predictor.Predictor`; drawing is in :mod:`utils.inference.visualize`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

from utils.data.io import read_class_names
from utils.device import PRECISIONS
from utils.errors import ArgumentParser, UserError, parse_input_size, run_cli
from utils.evaluation.threshold import threshold_arg
from utils.geo.run import predict_scenes, scene_options, split_scenes
from utils.inference.app import export, interactive, predict_jobs
from utils.inference.benchmark import fps_benchmark
from utils.inference.cli import add_bands_argument, add_slide_arguments, build_predictor, output_options, video_options
from utils.inference.inputs import find_images
from utils.inference.onnx_export import DEFAULT_OPSET, EXPORTERS
from utils.inference.options import InferenceOptions
from utils.inference.outputs import Run, report_counts
from utils.inference.quantize import CALIBRATION_METHODS, QuantizeOptions
from utils.inference.video import check_not_input, run_video
from utils.inference.visualize import MIX_MODES


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="Predict segmentation masks with DeepLabV3+ for images, folders, videos or a camera.")
    parser.add_argument("inputs", nargs="*", help="images and/or folders (searched recursively); "
                        "none: asks for file names interactively")
    parser.add_argument("--weights", default="model_data/deeplab_mobilenetv2.pth",
                        help="checkpoint from train.py or an original release .pth (default: %(default)s)")
    parser.add_argument("--onnx", metavar="PATH", help="run this ONNX model with ONNX Runtime instead of PyTorch")
    parser.add_argument("--out", default="img_out", help="output folder for images (default: %(default)s)")
    parser.add_argument("--video", metavar="PATH|CAMERA_INDEX", help="a video file, or a camera index like 0")
    parser.add_argument("--save", metavar="OUT.mp4", help="video mode: write the result video here")
    parser.add_argument("--show", action="store_true", help="video mode: show the result in a window (q quits)")
    parser.add_argument("--fps", nargs="?", type=int, const=100, metavar="N",
                        help="latency benchmark: N runs (default 100) on one image (the first input, else synthetic)")
    parser.add_argument("--export-onnx", metavar="PATH", help="export the model to ONNX and verify it")
    parser.add_argument("--dynamic", action="store_true", help="ONNX export: dynamic batch, height and width")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default: %(default)s)")
    parser.add_argument("--exporter", choices=EXPORTERS, default="torchscript",
                        help="ONNX exporter (default: %(default)s, fast; dynamo is slower, same graph)")
    parser.add_argument("--no-simplify", action="store_true", help="ONNX export: skip onnxsim even if installed")
    parser.add_argument("--int8", action="store_true", help="ONNX export: quantize to int8 (ONNX Runtime static "
                        "QDQ, per-channel), calibrated on --calib-data through the inference pre-processing")
    parser.add_argument("--calib-data", metavar="ROOT", help="--int8: calibration images, a dataset in the VOC "
                        "layout (its --calib-split) or a folder of images")
    parser.add_argument("--calib-split", default="train", help="--int8: split of --calib-data (default: %(default)s)")
    parser.add_argument("--calib-images", type=int, default=QuantizeOptions.calib_images, metavar="N",
                        help="--int8: calibration images, spread over the split (default: %(default)s)")
    parser.add_argument("--calib-method", choices=CALIBRATION_METHODS, default=QuantizeOptions.method,
                        help="--int8: activation ranges from the calibration tensors (default: %(default)s)")
    parser.add_argument("--mix", choices=MIX_MODES, default="blend",
                        help="blend with the image, colour mask only, or objects cut out on black")
    parser.add_argument("--alpha", type=float, default=0.7, help="blend: weight of the colour mask (default 0.7)")
    parser.add_argument("--count", action="store_true", help="print and save (counts.csv) per-class pixel counts")
    parser.add_argument("--save-mask", action="store_true", help="also write the class-index PNG (<name>_mask.png)")
    parser.add_argument("--save-prob", action="store_true",
                        help="also write <name>_prob.png: the foreground probability (binary models) or the "
                        "predicted class's probability, as grey levels 0..255 (images only, not video)")
    parser.add_argument("--prob-bits", type=int, choices=(8, 16), default=8,
                        help="--save-prob: 8-bit (0..255) or 16-bit (0..65535) PNGs (default: %(default)s)")
    parser.add_argument("--threshold", type=threshold_arg, metavar="P",
                        help="binary models: foreground where the probability reaches P (default: the "
                        "threshold chosen on the validation split, saved in the checkpoint)")
    parser.add_argument("--polygons", action="store_true",
                        help="raster scenes: also write <name>.geojson, one polygon per class region, in WGS84")
    parser.add_argument("--tta", action="store_true", help="test-time augmentation: scales 0.75/1/1.25 and flips")
    add_slide_arguments(parser)
    add_bands_argument(parser)
    parser.add_argument("--precision", choices=PRECISIONS, default="fastest",
                        help="fastest (default): fp16 on CUDA, bf16 on CPUs with native bf16, else fp32; "
                        "auto: like fastest but fp32 on every CPU; or force fp32/fp16/bf16")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch / ONNX Runtime (default: all cores)")
    parser.add_argument("--classes", metavar="FILE", help="class names, one per line; must match the checkpoint")
    parser.add_argument("--downsample-factor", type=int, choices=(8, 16), help="override the output stride")
    parser.add_argument("--input-size", type=int, nargs="+", metavar=("H", "W"),
                        help="network input size (default: the checkpoint's, else 512 512)")
    parser.add_argument("--batch-size", type=int,
                        help=f"images per forward pass (default: {InferenceOptions.batch_size}; raster scenes on a "
                        "CPU: 1 window, as fast as more and about 100 MiB less memory per window)")
    args = parser.parse_args(argv)
    args.input_size = parse_input_size(args.input_size)
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    # Photos batch by default; a scene keeps None (its own default) unless the flag was given.
    args.scene_batch_size = args.batch_size
    args.batch_size = args.batch_size or InferenceOptions.batch_size
    if args.fps is not None and args.fps < 1:
        parser.error("--fps N needs N >= 1")
    if args.int8 and not (args.export_onnx and args.calib_data):
        parser.error("--int8 needs --export-onnx OUT.onnx and --calib-data ROOT (calibration images)")
    if args.calib_data and not args.int8:
        parser.error("--calib-data calibrates an int8 export: add --int8 (and --export-onnx OUT.onnx)")
    if args.calib_images < 1:
        parser.error("--calib-images N needs N >= 1")
    return args


def _int8_options(args: argparse.Namespace) -> QuantizeOptions | None:
    """The --int8 flags as options (None without --int8)."""
    if not args.int8:
        return None
    return QuantizeOptions(args.calib_data, calib_split=args.calib_split, calib_images=args.calib_images,
                           method=args.calib_method, batch_size=args.batch_size, threads=args.threads)


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    names = read_class_names(args.classes) if args.classes else None
    if args.export_onnx:
        export(args.weights, args.export_onnx, class_names=names, downsample_factor=args.downsample_factor,
               input_size=args.input_size, dynamic=args.dynamic, opset=args.opset, simplify=not args.no_simplify,
               exporter=args.exporter, int8=_int8_options(args))
        if not (args.inputs or args.video or args.fps):
            return 0
    outputs = output_options(args)
    if args.video is not None and args.save:
        check_not_input(args.save, str(args.video))  # before the model loads
    predictor = build_predictor(args, names)
    run = Run()
    if args.fps:
        fps_benchmark(predictor, args.fps, args.inputs[0] if args.inputs else None)
        return 0
    if args.video is not None:
        run_video(predictor, video_options(args), outputs, run)
    elif args.inputs:
        jobs, run.failures = find_images(args.inputs, outputs.out_dir, outputs.save_mask, outputs.save_prob)
        if not jobs:
            raise UserError("; ".join(run.failures) if run.failures else "no images given")
        scene_outputs = scene_options(outputs, args.polygons, args.scene_batch_size)
        scenes, jobs = split_scenes(jobs, scene_outputs, outputs.out_dir)
        predict_scenes(scenes, predictor, outputs.out_dir, scene_outputs, run)
        predict_jobs(jobs, predictor, outputs, run)
        print(f"{run.segmented} image(s) segmented -> {outputs.out_dir}/")
    else:
        interactive(predictor, outputs, run)
    if args.count:
        report_counts(run, predictor.class_names, outputs.out_dir)
    if run.failures and not run.segmented:
        raise UserError("; ".join(run.failures))  # nothing came out: one error line, exit 2
    if run.failures:
        for failure in run.failures:
            print(f"error: {failure}", file=sys.stderr)
        print(f"{len(run.failures)} input(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(lambda argv: main(parse_args(argv)))
