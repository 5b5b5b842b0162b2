"""Sliding-window inference (``--slide``): seconds and peak RSS per image size, each run in a fresh process.

For each image size (default 2048x1024, a Cityscapes frame, and 6000x4500, a large photo) a new
Python process builds a MobileNetV2 DeepLabV3+ (random weights, 21 classes, 512x512 windows,
overlap 0.33) in a :class:`~utils.inference.predictor.Predictor`, makes a synthetic RGB image and
runs :func:`~utils.inference.slide.slide_predict` once. It reports the wall seconds of that call,
the process's peak RSS (``ru_maxrss``, the whole process: Python, torch, model, image, mask) and
its RSS before the call. Rounds alternate the sizes; the table gives the minimum seconds and the
maximum peak RSS over rounds.

Run: ``.venv/bin/python -m bench.bench_slide [--rounds 3] [--sizes 1024x2048 4500x6000]``
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence

from bench.common import peak_rss_mib, run_child


def _size(text: str) -> tuple[int, int]:
    height, width = text.lower().split("x")
    return int(height), int(width)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs per size, alternating (default 3)")
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(1024, 2048), (4500, 6000)], metavar="HxW",
                        help="image sizes, height x width (default 1024x2048 4500x6000)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--window", type=int, default=512, help="window (input) size (default 512)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--precision", default="fp32", help="Predictor precision (default fp32)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--child", type=_size, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import cv2
    import numpy as np
    import torch

    from bench.common import machine_description
    from nets.spec import ModelSpec, build_model
    from utils.inference.options import InferenceOptions, SlideOptions
    from utils.inference.predictor import Predictor
    from utils.inference.slide import slide_predict, strides, window_starts

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    height, width = args.child
    spec = ModelSpec(num_classes=args.classes, input_size=(args.window, args.window))
    model = build_model(spec, init="pytorch").eval()
    predictor = Predictor(model, spec, InferenceOptions(device="cpu", batch_size=args.batch_size,
                                                        precision=args.precision))
    del model
    small = np.random.default_rng(0).integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    before = _current_rss_mib()
    start = time.perf_counter()
    mask = slide_predict(predictor.engine, image, SlideOptions(progress=False))
    seconds = time.perf_counter() - start
    stride = strides((args.window, args.window), SlideOptions.overlap)[0]
    windows = len(window_starts(height, args.window, stride)) * len(window_starts(width, args.window, stride))
    print(json.dumps({"seconds": seconds, "peak_mib": peak_rss_mib(), "before_mib": before,
                      "windows": windows, "mask_shape": list(mask.shape), "machine": machine_description()}))


def main(args: argparse.Namespace) -> None:
    results: dict[tuple[int, int], list[dict]] = {size: [] for size in args.sizes}
    passthrough = ["--classes", str(args.classes), "--window", str(args.window), "--batch-size",
                   str(args.batch_size), "--precision", args.precision]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    for round_index in range(args.rounds):
        for height, width in args.sizes:
            record = run_child("bench.bench_slide", [f"{height}x{width}", *passthrough])
            results[(height, width)].append(record)
            print(f"round {round_index + 1}: {width}x{height}: {record['seconds']:.1f} s, peak RSS "
                  f"{record['peak_mib']:.0f} MiB", file=sys.stderr, flush=True)
    machine = next(iter(results.values()))[0]["machine"]
    print(f"Machine: {machine}; mobilenet, {args.classes} classes, {args.window}x{args.window} windows, overlap "
          f"0.33, batch {args.batch_size}, {args.precision}; {args.rounds} fresh process(es) per size")
    print("| image (W x H) | windows | seconds | peak RSS, max (MiB) | RSS before the call (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for (height, width), records in results.items():
        print(f"| {width} x {height} | {records[0]['windows']} | {min(r['seconds'] for r in records):.1f} | "
              f"{max(r['peak_mib'] for r in records):.0f} | {min(r['before_mib'] for r in records):.0f} |")


if __name__ == "__main__":
    parsed = parse_args()
    if parsed.child:
        child(parsed)
    else:
        main(parsed)
