"""predict.py ``--fps``: latency of the full in-memory pipeline, with the model's parameters and FLOPs.

Warm-up runs come first and CUDA is synchronised around the timed loop, so the figure is the
real per-image time of :meth:`Predictor.predict`: letterbox (or sliding windows when
``predictor.slide`` is set), forward, resize and argmax. Parameters and FLOPs (per network input)
are those of the network the checkpoint holds, a binary model's one output channel included.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from utils.data.io import load_image
from utils.inference.predictor import Predictor


def fps_benchmark(predictor: Predictor, args: argparse.Namespace) -> None:
    """Time the full in-memory pipeline of :meth:`Predictor.predict` on one image (see the module docstring)."""
    from nets.deeplabv3_plus import DeepLab
    from utils.checkpoint import output_channels
    from utils.summary import count_flops, count_parameters

    if args.inputs and Path(args.inputs[0]).is_file():
        image = load_image(args.inputs[0])
        source = args.inputs[0]
    else:
        height, width = predictor.input_size
        image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
        source = f"synthetic {height}x{width} image"
    for _ in range(3):
        predictor.predict([image], tta=args.tta)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.fps):
        predictor.predict([image], tta=args.tta)
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / args.fps
    config = predictor.config
    print(f"{source}, network input {predictor.input_size[0]}x{predictor.input_size[1]}, "
          f"{'ONNX Runtime' if args.onnx else 'PyTorch ' + str(predictor.backend.dtype).removeprefix('torch.')} "
          f"on {predictor.device}, {args.fps} runs")
    print(f"{seconds * 1000:.2f} ms per image, {1 / seconds:.2f} FPS")
    if "backbone" in config:
        # A binary model has one output channel for its two classes: count the network it really is.
        model = DeepLab(output_channels(predictor.task, predictor.num_classes), config["backbone"],
                        downsample_factor=config.get("downsample_factor", 16),
                        head=config.get("head", "standard")).eval()
        params, flops = count_parameters(model), count_flops(model, predictor.input_size)
        print(f"parameters: {params / 1e6:.2f} M, FLOPs: {flops / 1e9:.2f} G per image (multiply-add = 2)")
