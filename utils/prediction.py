"""The predict.py application: input discovery, output writing, video, FPS benchmark and ONNX export.

``predict.py`` only parses flags and dispatches here; the segmentation itself is
:class:`utils.predictor.Predictor` and drawing is :mod:`utils.visualize`. Functions take
the parsed ``argparse.Namespace`` of predict.py.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from utils.checkpoint import load_model
from utils.data import IMAGE_EXTENSIONS, load_image, read_class_names
from utils.errors import UserError
from utils.onnx_export import export_onnx
from utils.predictor import Predictor
from utils.visualize import (
    class_counts,
    format_counts,
    make_palette,
    mix,
    save_index_png,
    write_counts_csv,
)


@dataclass
class Job:
    """One image to segment and where its outputs go (relative to --out)."""

    source: Path
    relative: Path


@dataclass
class Run:
    """What happened in a run: outputs written, per-class counts, failures to report at the end."""

    written: list[Path] = field(default_factory=list)
    segmented: int = 0
    failures: list[str] = field(default_factory=list)
    counts: np.ndarray | None = None
    per_image: list[tuple[str, np.ndarray]] = field(default_factory=list)


def find_images(inputs: Sequence[str], out_dir: Path, save_mask: bool = False) -> tuple[list[Job], list[str]]:
    """Expand files and folders (recursively, sorted) into jobs; bad inputs become failure lines.

    Two inputs whose outputs would land on the same path under ``out_dir`` (``a/x.jpg`` and
    ``b/x.jpg`` given as files, or the same file twice; with ``save_mask`` also ``x.jpg`` and
    ``x.png``, whose ``x_mask.png`` coincide) are a UserError naming both: one result must never
    silently replace another.
    """
    jobs: list[Job] = []
    failures: list[str] = []
    out_resolved = out_dir.resolve()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*"))
                     if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                     and not p.resolve().is_relative_to(out_resolved)]
            if not found:
                failures.append(f"folder {path} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
            jobs += [Job(p, p.relative_to(path)) for p in found]
        elif not path.exists():
            failures.append(f"image {path} not found")
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            failures.append(f"{path}: unknown image extension {path.suffix or '(none)'!r}; "
                            f"use one of {' '.join(IMAGE_EXTENSIONS)}")
        else:
            jobs.append(Job(path, Path(path.name)))
    _check_distinct_outputs(jobs, out_dir, save_mask)
    return jobs, failures


def _check_distinct_outputs(jobs: Sequence[Job], out_dir: Path, save_mask: bool) -> None:
    """UserError when two jobs would write the same output file."""
    seen: dict[Path, Path] = {}
    for job in jobs:
        outputs = [job.relative]
        if save_mask:
            outputs.append(mask_path(job.relative))
        for output in outputs:
            if output in seen:
                raise UserError(f"{seen[output]} and {job.source} would both be written to {out_dir / output}: "
                                "give them in separate runs or with different --out folders, or pass their "
                                "parent folders instead of the files")
        seen.update(dict.fromkeys(outputs, job.source))


def mask_path(target: Path) -> Path:
    """Where ``--save-mask`` writes the class-index PNG of the output ``target``."""
    return target.with_name(f"{target.stem}_mask.png")


def build_predictor(args: argparse.Namespace) -> Predictor:
    """PyTorch or ONNX Runtime predictor with the command-line overrides."""
    names = read_class_names(args.classes) if args.classes else None
    if args.onnx:
        return Predictor.from_onnx(args.onnx, batch_size=args.batch_size, threads=args.threads,
                                   class_names=names, input_size=args.input_size)
    return Predictor.from_weights(args.weights, device=args.device, batch_size=args.batch_size,
                                  precision=args.precision,
                                  num_classes=len(names) if names else None, class_names=names,
                                  downsample_factor=args.downsample_factor, input_size=args.input_size)


def write_image(rgb: np.ndarray, path: Path) -> None:
    """Save an RGB array; the format follows the extension (as the input's name is kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), bgr, params):
        raise UserError(f"cannot write {path}: check that the folder is writable")


def record(run: Run, name: str, mask: np.ndarray, num_classes: int) -> None:
    counts = class_counts(mask, num_classes)
    run.counts = counts if run.counts is None else run.counts + counts
    run.per_image.append((name, counts))


def save_outputs(image: np.ndarray, mask: np.ndarray, source: Path, target: Path, args: argparse.Namespace,
                 predictor: Predictor, palette: np.ndarray, run: Run) -> None:
    """Write the rendered image (and mask PNG), count classes; never over the input itself."""
    if target.resolve() == source.resolve():
        raise UserError(f"refusing to overwrite the input {target}: choose another --out")
    write_image(mix(image, mask, args.mix, args.alpha, palette), target)
    run.written.append(target)
    if args.save_mask:
        index_png = mask_path(target)
        save_index_png(mask, index_png, palette)
        run.written.append(index_png)
    if args.count:
        record(run, str(target), mask, predictor.num_classes)


def predict_jobs(jobs: list[Job], predictor: Predictor, args: argparse.Namespace, run: Run) -> None:
    """Segment the jobs batch by batch; unreadable images are recorded and skipped."""
    out_dir = Path(args.out)
    palette = make_palette(predictor.num_classes)
    progress = tqdm(total=len(jobs), unit="img", disable=len(jobs) < 2, file=sys.stderr)
    for start in range(0, len(jobs), predictor.batch_size):
        batch: list[tuple[Job, np.ndarray]] = []
        for job in jobs[start:start + predictor.batch_size]:
            try:
                batch.append((job, load_image(job.source)))
            except UserError as exc:
                run.failures.append(str(exc))
                progress.update(1)
        if not batch:
            continue
        masks = predictor.predict([image for _, image in batch], tta=args.tta)
        for (job, image), mask in zip(batch, masks, strict=True):
            save_outputs(image, mask, job.source, out_dir / job.relative, args, predictor, palette, run)
            run.segmented += 1
            progress.update(1)
    progress.close()


def report_counts(run: Run, predictor: Predictor, out_dir: Path) -> None:
    if run.counts is None:
        return
    print(format_counts(run.counts, predictor.class_names))
    path = write_counts_csv(run.counts, predictor.class_names, out_dir / "counts.csv")
    if len(run.per_image) > 1:
        per_image = out_dir / "counts_per_image.csv"
        # csv.writer quotes names holding commas or quotes (file names and class names may).
        with per_image.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", *predictor.class_names])
            for name, counts in run.per_image:
                writer.writerow([name, *(int(c) for c in counts)])
    print(f"counts saved to {path}")


def interactive(predictor: Predictor, args: argparse.Namespace, run: Run) -> None:
    """Ask for image file names until an empty line or end of input, like the original predict.py."""
    while True:
        try:
            name = input("Input image filename (empty line to quit): ").strip()
        except EOFError:
            break
        if not name:
            break
        jobs, failures = find_images([name], Path(args.out), args.save_mask)
        for failure in failures:
            print(f"error: {failure}", file=sys.stderr)
        before = len(run.written)
        try:
            predict_jobs(jobs, predictor, args, run)
        except UserError as exc:
            run.failures.append(str(exc))
        for failure in run.failures:
            print(f"error: {failure}", file=sys.stderr)
        run.failures.clear()
        for path in run.written[before:]:
            print(f"saved {path}")


def display_available() -> bool:
    """Whether cv2.imshow can open a window: a GUI-enabled OpenCV build and a display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        cv2.namedWindow("DeepLabV3+")
    except cv2.error:
        return False  # opencv-python-headless has no highgui backend
    return True


def open_video(source: str) -> tuple[cv2.VideoCapture, bool]:
    """Open a video file or camera index; a clear UserError when it cannot be opened."""
    is_camera = source.isdigit()
    if not is_camera and not Path(source).is_file():
        raise UserError(f"video file {source} not found (a camera is given by its index, like --video 0)")
    # OpenCV logs its own backend warnings for a missing camera; our error line says it better.
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        capture = cv2.VideoCapture(int(source) if is_camera else source)
        ok = capture.isOpened() and capture.grab()
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not ok:
        capture.release()
        if is_camera:
            raise UserError(f"camera {source} does not exist or cannot be opened; check the index (0 is the "
                            "first camera) and that no other program uses it")
        raise UserError(f"cannot open video {source}: unreadable file or a codec OpenCV lacks")
    capture.release()  # grab() consumed a frame: reopen to start at the beginning
    return cv2.VideoCapture(int(source) if is_camera else source), is_camera


def run_video(predictor: Predictor, args: argparse.Namespace, run: Run) -> None:
    """Segment a video or camera stream frame by frame with an FPS overlay; save and/or show it."""
    show = args.show
    if show and not display_available():
        if not args.save:
            raise UserError("--show needs a display and an OpenCV build with GUI support (this one is headless "
                            "or DISPLAY is unset); use --save out.mp4 instead")
        print("warning: no display available, --show ignored; saving to " + args.save, file=sys.stderr)
        show = False
    capture, is_camera = open_video(args.video)
    save = args.save
    if not save and not show:
        if is_camera:
            capture.release()
            raise UserError("camera mode needs --show or --save out.mp4")
        save = str(Path(args.out) / f"{Path(args.video).stem}.mp4")
    fps_in = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if not is_camera else None
    palette = make_palette(predictor.num_classes)
    writer = None
    fps = 0.0
    progress = tqdm(total=total if total and total > 0 else None, unit="frame", file=sys.stderr)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            started = time.perf_counter()
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            mask = predictor.predict([rgb], tta=args.tta)[0]
            out = cv2.cvtColor(mix(rgb, mask, args.mix, args.alpha, palette), cv2.COLOR_RGB2BGR)
            # Exponential smoothing keeps the overlay readable while it still follows real changes.
            fps = 1.0 / max(time.perf_counter() - started, 1e-6) if fps == 0 else \
                0.9 * fps + 0.1 / max(time.perf_counter() - started, 1e-6)
            cv2.putText(out, f"fps= {fps:.2f}", (10, 40), cv2.FONT_HERSHEY_SIMPLEX, 1, (0, 255, 0), 2)
            if args.count:
                record(run, f"frame {progress.n}", mask, predictor.num_classes)
            if save:
                if writer is None:
                    Path(save).parent.mkdir(parents=True, exist_ok=True)
                    height, width = out.shape[:2]
                    writer = cv2.VideoWriter(save, cv2.VideoWriter_fourcc(*"mp4v"), fps_in, (width, height))
                    if not writer.isOpened():
                        raise UserError(f"cannot write video {save}: check the folder and use a .mp4 or .avi name")
                writer.write(out)
            if show:
                cv2.imshow("DeepLabV3+", out)
                if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                    break
            progress.update(1)
    finally:
        progress.close()
        capture.release()
        if writer is not None:
            writer.release()
            run.written.append(Path(save))
        if show:
            cv2.destroyAllWindows()
    if progress.n == 0:
        raise UserError(f"video {args.video} gave no frames")
    if save:
        print(f"saved {save} ({progress.n} frames)")


def fps_benchmark(predictor: Predictor, args: argparse.Namespace) -> None:
    """Time the full in-memory pipeline (letterbox, forward, resize, argmax) on one image."""
    from nets.deeplabv3_plus import DeepLab
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
        model = DeepLab(predictor.num_classes, config["backbone"],
                        downsample_factor=config.get("downsample_factor", 16)).eval()
        params, flops = count_parameters(model), count_flops(model, predictor.input_size)
        print(f"parameters: {params / 1e6:.2f} M, FLOPs: {flops / 1e9:.2f} G per image (multiply-add = 2)")


def export(args: argparse.Namespace) -> None:
    """``--export-onnx PATH``: export the --weights model, verify it and only then place it at PATH."""
    if Path(args.export_onnx).resolve() == Path(args.weights).resolve():
        raise UserError(f"--export-onnx {args.export_onnx} is the --weights file itself: choose another name, "
                        "e.g. model.onnx")
    names = read_class_names(args.classes) if args.classes else None
    model, config = load_model(args.weights, device="cpu", num_classes=len(names) if names else None,
                               class_names=names, downsample_factor=args.downsample_factor,
                               input_size=args.input_size)
    size = args.input_size or config["input_size"]
    # export_onnx raises (and writes nothing) when ONNX Runtime disagrees with PyTorch.
    checks = export_onnx(model, args.export_onnx, size, config=config, dynamic=args.dynamic, opset=args.opset,
                         simplify=not args.no_simplify, exporter=args.exporter)
    print(f"exported {args.export_onnx} (opset {args.opset}, {'dynamic' if args.dynamic else 'static'} "
          f"{'batch/height/width' if args.dynamic else f'{size[0]}x{size[-1]}'})")
    for check in checks:
        print(f"verified {check}")
