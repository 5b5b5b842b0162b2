"""Inference benchmark: the full predict path (file in, blended image out) and the model alone.

At 512x512, batch 1, output stride 16, for mobilenet and xception, in one run:

- full path, ours: ``load_image`` -> ``Predictor.predict`` (OpenCV letterbox, inference mode,
  BatchNorm folded, channels-last, softmax/crop/resize/argmax in torch) -> ``mix`` -> ``write_image``,
  through PyTorch and through ONNX Runtime;
- full path, **baseline** (the plain way, as the original release does it): PIL open and
  letterbox, float32 eager model without inference mode (``torch.no_grad`` as in the original;
  the autograd-on figure is in the technique table), softmax, crop and argmax in NumPy, resize
  with ``cv2.resize`` on the NumPy probabilities (the original's call), ``Image.blend``, PIL save;
- model alone, technique by technique: autograd on, ``no_grad``, ``inference_mode``, + BatchNorm
  folding, + channels-last, thread count, ONNX Runtime without and with graph optimisation;
- CUDA (fp32, and fp16 + channels-last) when a GPU is present.

Timings take the minimum over interleaved rounds (the machine is shared, so the minimum is
the figure least disturbed by other processes); medians are printed too. GFLOP/s is set
against the float32 matmul ceiling measured in the same run (``bench.common.matmul_gflops``).

Run: ``.venv/bin/python -m bench.bench_predict [--rounds 5] [--backbones mobilenet xception]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from bench.common import machine_description, matmul_gflops
from nets.deeplabv3_plus import BACKBONES, DeepLab
from utils.data.io import load_image, voc_palette
from utils.inference.backends import OnnxBackend
from utils.inference.fuse import fuse_bn
from utils.inference.onnx_export import export_onnx, make_session
from utils.inference.outputs import write_image
from utils.inference.predictor import Predictor
from utils.inference.visualize import make_palette, mix
from utils.summary import count_flops

SIZE = 512


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per figure")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    parser.add_argument("--image-size", type=int, nargs=2, default=(375, 500), metavar=("H", "W"),
                        help="size of the test photo (default 375 500, a typical VOC image)")
    parser.add_argument("--no-techniques", action="store_true", help="skip the per-technique table")
    parser.add_argument("--threads", type=int, help="torch and ONNX Runtime threads (default: all cores)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: latency; cpu: process CPU time, robust on a shared machine (use with --threads 1)")
    return parser.parse_args(argv)


def test_photo(path: Path, height: int, width: int) -> None:
    """A smooth, photo-like JPEG (random noise would make JPEG coding unrealistically slow)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])


def baseline_full_path(model: torch.nn.Module, source: Path, target: Path, palette: list[int],
                       autograd: bool = False) -> None:
    """BASELINE, the plain way (the original release's detect_image), kept here only for comparison.

    ``autograd=True`` drops the original's ``torch.no_grad()`` as well (the most literal plain way)."""
    image = Image.open(source).convert("RGB")
    original = image.copy()
    width, height = image.size
    scale = min(SIZE / width, SIZE / height)
    nw, nh = int(width * scale), int(height * scale)
    canvas = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((SIZE - nw) // 2, (SIZE - nh) // 2))
    data = np.expand_dims(np.transpose(np.array(canvas, np.float32) / 255.0, (2, 0, 1)), 0)
    with torch.set_grad_enabled(autograd):
        logits = model(torch.from_numpy(data))[0].detach().numpy().transpose(1, 2, 0)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    probs = exp / exp.sum(-1, keepdims=True)
    top, left = (SIZE - nh) // 2, (SIZE - nw) // 2
    probs = probs[top:top + nh, left:left + nw]
    probs = cv2.resize(probs, (width, height), interpolation=cv2.INTER_LINEAR)
    mask = probs.argmax(-1)
    colours = np.array(palette, np.uint8).reshape(-1, 3)[mask.reshape(-1)].reshape(height, width, 3)
    Image.blend(original, Image.fromarray(colours), 0.7).save(target)


def ours_full_path(predictor: Predictor, source: Path, target: Path, palette: np.ndarray) -> None:
    """Ours: what predict.py does per image."""
    image = load_image(source)
    mask = predictor.predict([image])[0]
    write_image(mix(image, mask, "blend", 0.7, palette), target)


CLOCK: Callable[[], float] = time.perf_counter
THREADS: int | None = None


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int, warmup: int = 1
                ) -> dict[str, tuple[float, float]]:
    """(min, median) seconds per candidate, timed round-robin so that load changes hit all alike.

    With ``--clock cpu`` the process CPU time is used: other processes on a shared machine
    then slow nothing down, and with one thread it equals the latency of an idle machine."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            start = CLOCK()
            fn()
            times[name].append(CLOCK() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def inference(model: torch.nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    def run() -> object:
        if mode == "grad":
            return model(x)
        context = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
        with context:
            return model(x)
    return run


def bf16(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)
    return run


def ort_runner(path: Path, optimize: bool, threads: int | None = None) -> Callable[[], object]:
    session = make_session(path, threads=threads or THREADS, optimize=optimize)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    return lambda: session.run(None, {name: x})


def row(name: str, seconds: tuple[float, float], flops: int | None, ceiling: float, ref: float | None = None) -> str:
    best, median = seconds
    cells = [name, f"{best * 1e3:.0f}", f"{median * 1e3:.0f}", f"{1 / best:.2f}"]
    if flops:
        achieved = flops / best / 1e9
        cells += [f"{achieved:.1f}", f"{100 * achieved / ceiling:.0f}%"]
    else:
        cells += ["", ""]
    cells.append(f"{ref / best:.2f}x" if ref else "")
    return "| " + " | ".join(cells) + " |"


HEADER = ("| what | ms (min) | ms (median) | FPS | GFLOP/s | % of matmul ceiling | speed-up |\n"
          "|---|---|---|---|---|---|---|")


def bench_backbone(backbone: str, args: argparse.Namespace, folder: Path, ceiling: float) -> None:
    torch.manual_seed(0)
    model = DeepLab(21, backbone, downsample_factor=16).eval()
    flops = count_flops(model, (SIZE, SIZE))
    config = {"backbone": backbone, "num_classes": 21, "downsample_factor": 16, "input_size": [SIZE, SIZE]}
    onnx_path = folder / f"{backbone}.onnx"
    export_onnx(model, onnx_path, (SIZE, SIZE), config=config, dynamic=True)
    source, target = folder / "photo.jpg", folder / "out.jpg"
    predictor = Predictor(model, config, "cpu", batch_size=1, precision="fastest")
    predictor_fp32 = Predictor(model, config, "cpu", batch_size=1, precision="fp32")
    fastest = "bf16" if predictor.backend.dtype == torch.bfloat16 else "fp32"
    onnx_predictor = Predictor(None, config, backend=OnnxBackend(onnx_path, threads=THREADS), batch_size=1)
    voc, palette = voc_palette(), make_palette(21)

    print(f"\n### {backbone}, output stride 16, 512x512, batch 1 — {flops / 1e9:.1f} GFLOPs per forward\n")
    print("Full path (photo file in, blended JPEG out):\n")
    full = interleaved({
        "baseline (plain way, no_grad as the original)": lambda: baseline_full_path(model, source, target, voc),
        "baseline, autograd on": lambda: baseline_full_path(model, source, target, voc, autograd=True),
        f"ours, PyTorch (predict.py default: {fastest})": lambda: ours_full_path(predictor, source, target, palette),
        "ours, PyTorch fp32": lambda: ours_full_path(predictor_fp32, source, target, palette),
        "ours, ONNX Runtime": lambda: ours_full_path(onnx_predictor, source, target, palette),
    }, args.rounds)
    print(HEADER)
    ref = full["baseline (plain way, no_grad as the original)"][0]
    for name, seconds in full.items():
        print(row(name, seconds, None, ceiling, ref))

    x = torch.rand(1, 3, SIZE, SIZE)
    fused = copy.deepcopy(model)
    fuse_bn(fused)
    fused_cl = copy.deepcopy(fused).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    candidates = {"eager, autograd on": inference(model, x, "grad"), "eager, no_grad": inference(model, x, "no_grad"),
                  "inference_mode": inference(model, x, "inference")}
    if not args.no_techniques:
        candidates |= {"+ BN folded": inference(fused, x, "inference"),
                       "+ BN folded + channels-last (ours, fp32)": inference(fused_cl, x_cl, "inference"),
                       "+ bf16 autocast (ours, CPUs with native bf16)": bf16(fused_cl, x_cl),
                       "ORT, graph optimisation off": ort_runner(onnx_path, optimize=False),
                       "ORT, graph optimisation on (ours)": ort_runner(onnx_path, optimize=True)}
    print("\nModel alone (forward only):\n")
    alone = interleaved(candidates, args.rounds)
    print(HEADER)
    ref = alone["eager, no_grad"][0]
    for name, seconds in alone.items():
        print(row(name, seconds, flops, ceiling, ref))

    if not args.no_techniques and torch.get_num_threads() > 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        one = interleaved({"eager, no_grad, 1 thread": inference(model, x, "no_grad"),
                           "ours fp32, PyTorch, 1 thread": inference(fused_cl, x_cl, "inference"),
                           "ours, ORT, 1 thread": ort_runner(onnx_path, optimize=True, threads=1)}, args.rounds)
        torch.set_num_threads(threads)
        for name, seconds in one.items():
            print(row(name, seconds, flops, ceiling, ref))

    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        fp32 = Predictor(model, config, cuda, batch_size=1, channels_last=False, precision="fp32")
        fp16 = Predictor(model, config, cuda, batch_size=1)
        xc = x.to(cuda)

        def synced(fn: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                out = fn()
                torch.cuda.synchronize()
                return out
            return run

        print("\nCUDA:\n")
        gpu = interleaved({
            "model alone, fp32": synced(lambda: fp32.backend(xc)),
            "model alone, fp16 + channels-last (ours)": synced(lambda: fp16.backend(xc)),
            "full path, ours": synced(lambda: ours_full_path(fp16, source, target, palette)),
        }, max(args.rounds, 20), warmup=5)
        gpu_ceiling = matmul_gflops(cuda)
        print(f"float32 matmul ceiling on {machine_description(cuda)}: {gpu_ceiling:.0f} GFLOP/s\n")
        print(HEADER)
        for name, seconds in gpu.items():
            print(row(name, seconds, flops if "alone" in name else None, gpu_ceiling))


def cpu_clock_ceiling(n: int = 2048) -> float:
    """float32 matmul GFLOP/s timed with the CPU clock (``bench.common.matmul_gflops`` uses the wall clock)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = min(interleaved({"matmul": lambda: a @ b}, 5)["matmul"])
    return 2 * n**3 / best / 1e9


def main(args: argparse.Namespace) -> int:
    global CLOCK, THREADS
    if args.threads:
        torch.set_num_threads(args.threads)
        THREADS = args.threads
    if args.clock == "cpu":
        CLOCK = time.process_time
    ceiling = matmul_gflops("cpu") if args.clock == "wall" else cpu_clock_ceiling()
    print(f"machine: {machine_description('cpu')}; float32 matmul ceiling (2048^3) {ceiling:.1f} GFLOP/s")
    print(f"test photo {args.image_size[0]}x{args.image_size[1]} JPEG, network input {SIZE}x{SIZE}, "
          f"{args.rounds} interleaved rounds, {args.clock} clock, {torch.get_num_threads()} thread(s)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        test_photo(folder / "photo.jpg", *args.image_size)
        for backbone in args.backbones:
            bench_backbone(backbone, args, folder, ceiling)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
