"""Inference benchmark: the full predict path (photo file in, blended JPEG out) at several photo sizes, ours
against a rebuild of the original release's ``detect_image``, timed in the same run.

For each size (default 500x375, 1330x1330, 1920x1080, 4032x3024 and a 6000x4500 scan, width x height):

- **original** (BASELINE ONLY, :func:`original_full_path`): PIL open, PIL bicubic letterbox, float32
  eager model under ``torch.no_grad``, softmax, crop, ``cv2.resize`` of the probabilities to the
  photo's size, argmax, palette colours, ``Image.blend(..., 0.7)``, PIL save;
- **ours** (:func:`ours_full_path`), what ``predict.py`` runs per image: ``load_image`` ->
  ``Predictor.predict`` -> ``mix`` -> ``write_image``, in ``predict.py``'s default precision and in
  float32 (one row when the default is float32 on this machine);
- **ours onnx fp32 / ours onnx int8** (``--no-onnx`` skips them): the same path with ``predict.py --onnx`` on
  the model's static fp32 export and on its int8 export (``--int8``, calibrated on a few test photos).

Reported per size: ms per image (minimum and median over interleaved rounds), the ratio
ours / original, the share of the full path that is not the forward pass (the model call is
timed inside each run), the share of mask pixels where ours and the original differ, and the
peak RSS of one full path in a fresh process (``--no-rss`` skips it).

Then (``--folder N``, default 12; 0 skips) a folder of N photos of ``--folder-size`` (default
1920x1080, a video frame): the original's loop against ``predict.py``'s own folder loop
(:func:`utils.inference.app.predict_jobs`, batch 4), ms per photo and the share not in the forward pass.

Run: ``.venv/bin/python -m bench.bench_predict [--rounds 3] [--sizes 500x375 1920x1080]``
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import predict as predict_cli
from bench.common import machine_description, peak_rss_mib
from nets.registry import backbone_names
from nets.spec import ModelSpec, build_model
from utils.data.io import load_image, voc_palette
from utils.inference.app import predict_jobs
from utils.inference.cli import output_options
from utils.inference.inputs import find_images
from utils.inference.onnx_export import export_onnx
from utils.inference.options import InferenceOptions
from utils.inference.outputs import Run, write_image
from utils.inference.predictor import Predictor
from utils.inference.quantize import QuantizeOptions, quantize_onnx
from utils.inference.visualize import make_palette, mix

SIZE = 512
DEFAULT_SIZES = ("500x375", "1330x1330", "1920x1080", "4032x3024", "6000x4500")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (default: %(default)s)")
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES), metavar="WxH",
                        help="photo sizes, width x height (default: %(default)s)")
    parser.add_argument("--backbone", default="mobilenet", choices=backbone_names())
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--folder", type=int, default=12, metavar="N",
                        help="also time predict.py's folder loop on N photos of --folder-size (0 skips; "
                             "default: %(default)s)")
    parser.add_argument("--folder-size", default="1920x1080", metavar="WxH", help="default: %(default)s")
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime fp32 and int8 rows")
    parser.add_argument("--rss-case", nargs=2, metavar=("METHOD", "WxH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.sizes = [parse_size(text) for text in args.sizes]
    args.folder_size = parse_size(args.folder_size)
    return args


def parse_size(text: str) -> tuple[int, int]:
    """'1920x1080' -> (1920, 1080), width first."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"size {text!r}: give WIDTHxHEIGHT, e.g. 1920x1080") from None
    return width, height


def test_photo(path: Path, height: int, width: int) -> None:
    """A smooth, photo-like JPEG (random noise would make JPEG coding unrealistically slow)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])


class SceneModel(torch.nn.Module):
    """A random DeepLab plus a fixed smooth logit field: class regions about 60 pixels across on the
    512x512 canvas, so masks have borders like a trained model's (about 5% of the network-size cells).
    A random DeepLab alone predicts one class nearly everywhere, which would hide the cost of borders."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = build_model(ModelSpec(backbone=backbone, num_classes=21), init="pytorch").eval()
        coarse = torch.randn(1, 21, SIZE // 64, SIZE // 64, generator=torch.Generator().manual_seed(0)) * 4
        self.register_buffer("field", F.interpolate(coarse, size=(SIZE, SIZE), mode="bicubic", align_corners=False))
        self.eval()  # the export restores the mode it found: keep it eval for every candidate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.field


class Stopwatch:
    """Wraps a callable and adds up the seconds spent in it (the forward pass inside a full path)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], predictor: Predictor | None = None) -> None:
        self.fn, self.seconds = fn, 0.0
        self.predictor = predictor  # the Predictor whose forward pass this is (ours)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.fn(x)
        self.seconds += time.perf_counter() - start
        return out


def original_full_path(model: Callable[[torch.Tensor], torch.Tensor], source: Path, target: Path,
                       palette: list[int]) -> np.ndarray:
    """BASELINE ONLY: the original release's ``detect_image`` (mix_type 0) and save, step for step."""
    image = Image.open(source).convert("RGB")
    old_img = image.copy()
    original_w, original_h = image.size
    scale = min(SIZE / original_w, SIZE / original_h)
    nw, nh = int(original_w * scale), int(original_h * scale)
    canvas = Image.new("RGB", (SIZE, SIZE), (128, 128, 128))
    canvas.paste(image.resize((nw, nh), Image.BICUBIC), ((SIZE - nw) // 2, (SIZE - nh) // 2))
    data = np.expand_dims(np.transpose(np.array(canvas, np.float32) / 255.0, (2, 0, 1)), 0)
    with torch.no_grad():
        pr = model(torch.from_numpy(data))[0]
        pr = F.softmax(pr.permute(1, 2, 0), dim=-1).cpu().numpy()
        pr = pr[(SIZE - nh) // 2:(SIZE - nh) // 2 + nh, (SIZE - nw) // 2:(SIZE - nw) // 2 + nw]
        pr = cv2.resize(pr, (original_w, original_h), interpolation=cv2.INTER_LINEAR)
        pr = pr.argmax(axis=-1)
    colours = np.reshape(np.array(palette, np.uint8).reshape(-1, 3)[np.reshape(pr, [-1])],
                         [original_h, original_w, -1])
    Image.blend(old_img, Image.fromarray(np.uint8(colours)), 0.7).save(target)
    return pr


def ours_full_path(predictor: Predictor, source: Path, target: Path, palette: np.ndarray) -> np.ndarray:
    """Ours: what predict.py does per image."""
    image = load_image(source)
    mask = predictor.predict([image])[0]
    write_image(mix(image, mask, "blend", 0.7, palette), target)
    return mask


def onnx_predictors(model: torch.nn.Module, folder: Path) -> dict[str, Predictor]:
    """``predict.py --onnx`` predictors (batch 1) of the model's static fp32 export and of its int8 export,
    calibrated on six test photos of several sizes; the files are written into ``folder``."""
    spec = ModelSpec(num_classes=21, input_size=(SIZE, SIZE))
    calib = folder / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    for index, (width, height) in enumerate([(500, 375), (640, 480), (375, 500), (1280, 720), (800, 800),
                                             (1024, 576)]):
        test_photo(calib / f"{index}.jpg", height, width)
    export_onnx(model, folder / "fp32.onnx", (SIZE, SIZE), spec=spec)
    with contextlib.redirect_stderr(io.StringIO()):
        quantize_onnx(folder / "fp32.onnx", folder / "int8.onnx", QuantizeOptions(calib, batch_size=1))
    options = InferenceOptions(device="cpu", batch_size=1)
    return {name: Predictor.from_onnx(folder / f"{precision}.onnx", options)
            for name, precision in (("ours onnx fp32", "fp32"), ("ours onnx int8", "int8"))}


def methods(model: torch.nn.Module, only: str | None = None, onnx_dir: Path | None = None
            ) -> dict[str, tuple[Stopwatch, Callable[[Path, Path], np.ndarray]]]:
    """The candidates by name (or just ``only``): (the stopwatch around the forward pass, the full path).
    With ``onnx_dir``, also the ONNX Runtime fp32 and int8 rows (their files written there)."""
    spec = ModelSpec(num_classes=21, input_size=(SIZE, SIZE))
    out = {}
    if only in (None, "original"):
        voc, eager = voc_palette(), Stopwatch(model)
        out["original"] = (eager, lambda s, t: original_full_path(eager, s, t, voc))
    palette = make_palette(21)
    default = Predictor(model, spec, InferenceOptions(device="cpu", batch_size=1, precision="fastest"))
    precisions = {"ours default": default}
    if default.backend.dtype != torch.float32:
        precisions["ours fp32"] = None
    if onnx_dir is not None and (only is None or only.startswith("ours onnx")):
        precisions.update(onnx_predictors(model, onnx_dir))
    for name in precisions:
        if only not in (None, name):
            continue
        predictor = precisions[name] or Predictor(model, spec, InferenceOptions(device="cpu", batch_size=1,
                                                                                  precision="fp32"))
        watch = Stopwatch(predictor.backend, predictor)
        predictor.engine.backend = watch
        out[name] = (watch, lambda s, t, p=predictor: ours_full_path(p, s, t, palette))
    return out


def _quietly(fn: Callable[..., None], *args: object) -> None:
    """``fn(*args)`` with stderr (predict.py's progress bar) kept out of the tables."""
    with contextlib.redirect_stderr(io.StringIO()):
        fn(*args)


def folder_rows(candidates: dict[str, tuple[Stopwatch, Callable[[Path, Path], np.ndarray]]], count: int,
                size: tuple[int, int], rounds: int) -> list[tuple[str, float, float]]:
    """(method, ms per photo, share not in the forward pass) over a folder of ``count`` photos: the
    original's loop of ``detect_image`` + save, and ours through ``predict.py``'s own folder loop
    (:func:`utils.inference.app.predict_jobs`, with predict.py's default flags), which decodes the next photos
    while the last results are encoded. Best of ``rounds`` after a warm-up."""
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "in", Path(tmp) / "out"
        folder.mkdir()
        test_photo(folder / "0.jpg", size[1], size[0])
        for index in range(1, count):
            shutil.copy(folder / "0.jpg", folder / f"{index}.jpg")
        flags = predict_cli.parse_args([str(folder), "--out", str(out)])  # predict.py's own defaults
        jobs, _ = find_images(flags.inputs, out)
        runs: dict[str, Callable[[], None]] = {"original": lambda: [
            candidates["original"][1](job.source, out / job.relative) for job in jobs]}
        for name, (watch, _) in candidates.items():
            if name != "original":
                predictor = watch.predictor
                predictor.engine.batch_size = flags.batch_size
                outputs = output_options(flags)
                runs[name] = lambda p=predictor, o=outputs: _quietly(predict_jobs, jobs, p, o, Run())
        best: dict[str, tuple[float, float]] = {}
        out.mkdir()
        for round_index in range(rounds + 1):
            for name, run in runs.items():
                watch = candidates[name][0]
                watch.seconds = 0.0
                start = time.perf_counter()
                run()
                total = time.perf_counter() - start
                if round_index and (name not in best or total < best[name][0]):
                    best[name] = (total, watch.seconds)
    return [(name, total / count * 1e3, 1 - forward / total) for name, (total, forward) in best.items()]


def peak_rss(method: str, size: tuple[int, int], args: argparse.Namespace) -> float:
    """Peak RSS in MiB of one full path run in a fresh interpreter (imports and model included)."""
    command = [sys.executable, "-m", "bench.bench_predict", "--rss-case", method, f"{size[0]}x{size[1]}",
               "--backbone", args.backbone, *(["--no-onnx"] if args.no_onnx else [])]
    if args.threads:
        command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    return float(json.loads(result.stdout.strip().splitlines()[-1])["peak_mib"])


def rss_case(method: str, size: tuple[int, int], backbone: str) -> None:
    """Child process of :func:`peak_rss`: run one full path and print its peak RSS as JSON (an ONNX row's
    export and calibration included: they run before the model is timed)."""
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "photo.jpg"
        test_photo(source, size[1], size[0])
        candidates = methods(SceneModel(backbone), only=method, onnx_dir=Path(tmp) / "onnx")
        before = peak_rss_mib()
        candidates[method][1](source, Path(tmp) / "out.jpg")
    print(json.dumps({"peak_mib": peak_rss_mib(), "before_mib": before}))


def fraction_differing(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a != b))


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rss_case:
        rss_case(args.rss_case[0], parse_size(args.rss_case[1]), args.backbone)
        return 0
    model = SceneModel(args.backbone)
    onnx_files = tempfile.TemporaryDirectory()
    candidates = methods(model, onnx_dir=None if args.no_onnx else Path(onnx_files.name))
    names = list(candidates)
    print(f"machine: {machine_description('cpu')}; {args.backbone}, output stride 16, network input {SIZE}x{SIZE}, "
          f"batch 1; {args.rounds} interleaved rounds, wall clock")
    print(f"precisions: {', '.join(names[1:])} (default = predict.py's --precision fastest)")
    times: dict[tuple[str, tuple[int, int]], list[tuple[float, float]]] = {}
    masks: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for width, height in args.sizes:
            test_photo(folder / f"{width}x{height}.jpg", height, width)
        for round_index in range(args.rounds + 1):  # round 0 warms up
            for size in args.sizes:
                source = folder / f"{size[0]}x{size[1]}.jpg"
                for name in names:
                    watch, run = candidates[name]
                    watch.seconds = 0.0
                    start = time.perf_counter()
                    masks[name, size] = run(source, folder / "out.jpg")
                    total = time.perf_counter() - start
                    if round_index:
                        times.setdefault((name, size), []).append((total, watch.seconds))
    print("\n| photo (WxH) | method | ms (min) | ms (median) | time vs original | not forward | "
          "mask pixels differing from the original | peak RSS (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        reference = min(total for total, _ in times["original", size])
        for name in names:
            runs = times[name, size]
            best = min(runs)
            share = 1 - best[1] / best[0]
            rss = "" if args.no_rss else f"{peak_rss(name, size, args):.0f}"
            differing = fraction_differing(masks[name, size], masks["original", size])
            print(f"| {size[0]}x{size[1]} | {name} | {best[0] * 1e3:.0f} | "
                  f"{statistics.median(t for t, _ in runs) * 1e3:.0f} | {best[0] / reference:.2f}x | "
                  f"{100 * share:.0f}% | {100 * differing:.2f}% | {rss} |")
    if args.folder:
        print(f"\n{args.folder} photos of {args.folder_size[0]}x{args.folder_size[1]} in a folder, "
              "predict.py's loop (batch 4), best of the rounds:\n")
        print("| method | ms per photo | vs original | not forward |")
        print("|---|---:|---:|---:|")
        rows = folder_rows(candidates, args.folder, args.folder_size, args.rounds)
        reference = rows[0][1]
        for name, ms, share in rows:
            print(f"| {name} | {ms:.0f} | {ms / reference:.2f}x | {100 * share:.0f}% |")
    onnx_files.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
