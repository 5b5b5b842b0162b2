"""predict.py ``--fps``: latency of the full in-memory pipeline, with the model's parameters and FLOPs.

Warm-up runs come first and CUDA is synchronised around the timed loop, so the figure is the
real per-image time of :meth:`Predictor.predict`: the predictor's strategy (letterbox or sliding
windows), forward, resize and argmax. Parameters and FLOPs (per network input) are those of the
network the spec describes, a binary model's one output channel included.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from nets.spec import build_model
from utils.data.io import load_image
from utils.inference.backends import OnnxBackend
from utils.inference.predictor import Predictor


def fps_benchmark(predictor: Predictor, runs: int, image_path: str | Path | None = None) -> float:
    """Time :meth:`Predictor.predict` on one image (``image_path``, else a synthetic one of the input size)
    ``runs`` times after 3 warm-up runs; print the figures and return the seconds per image."""
    from utils.summary import count_flops, count_parameters

    if image_path is not None and Path(image_path).is_file():
        image = load_image(image_path)
        source = str(image_path)
    else:
        height, width = predictor.input_size
        image = np.random.default_rng(0).integers(0, 256, (height, width, predictor.spec.in_channels), dtype=np.uint8)
        source = f"synthetic {height}x{width} image"
    for _ in range(3):
        predictor.predict([image])
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(runs):
        predictor.predict([image])
    if predictor.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / runs
    onnx = isinstance(predictor.backend, OnnxBackend)
    print(f"{source}, network input {predictor.input_size[0]}x{predictor.input_size[1]}, "
          f"{'ONNX Runtime' if onnx else 'PyTorch ' + str(predictor.backend.dtype).removeprefix('torch.')} "
          f"on {predictor.device}, {runs} runs")
    print(f"{seconds * 1000:.2f} ms per image, {1 / seconds:.2f} FPS")
    if not onnx or predictor.backend.stored_spec() is not None:
        # A binary model has one output channel for its two classes: count the network it really is.
        model = build_model(predictor.spec, init="pytorch").eval()
        params, flops = count_parameters(model), count_flops(model, predictor.input_size)
        print(f"parameters: {params / 1e6:.2f} M, FLOPs: {flops / 1e9:.2f} G per image (multiply-add = 2)")
    return seconds
