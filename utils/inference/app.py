"""The predict.py application: build the predictor, segment a batch of jobs, the interactive prompt, export.

``predict.py`` parses flags and dispatches to these functions and to
:mod:`utils.inference.video` and :mod:`utils.inference.benchmark`; the segmentation itself is
:class:`~utils.inference.predictor.Predictor`. Functions take predict.py's parsed
``argparse.Namespace``.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.checkpoint import load_model
from utils.data.io import load_image, read_class_names
from utils.errors import UserError
from utils.inference.inputs import Job, find_images
from utils.inference.onnx_export import export_onnx
from utils.inference.outputs import Run, quantize_prob, save_outputs
from utils.inference.pipeline import read_ahead
from utils.inference.predictor import Predictor
from utils.inference.visualize import make_palette


def build_predictor(args: argparse.Namespace) -> Predictor:
    """PyTorch or ONNX Runtime predictor with the command-line overrides (``--threshold``: binary models only)."""
    names = read_class_names(args.classes) if args.classes else None
    if args.onnx:
        predictor = Predictor.from_onnx(args.onnx, batch_size=args.batch_size, threads=args.threads,
                                        class_names=names, input_size=args.input_size, threshold=args.threshold)
        if args.threshold is not None and predictor.task != "binary":
            raise UserError(f"--threshold applies to binary models (one output channel); {args.onnx} is a "
                            f"{predictor.num_classes}-class model: drop --threshold")
        return predictor
    return Predictor.from_weights(args.weights, device=args.device, batch_size=args.batch_size,
                                  precision=args.precision,
                                  num_classes=len(names) if names else None, class_names=names,
                                  downsample_factor=args.downsample_factor, input_size=args.input_size,
                                  threshold=args.threshold)


def _read_batch(jobs: list[Job]) -> tuple[list[tuple[Job, np.ndarray]], list[str]]:
    """The readable images of ``jobs`` and a failure line for each unreadable one."""
    batch, failures = [], []
    for job in jobs:
        try:
            batch.append((job, load_image(job.source)))
        except UserError as exc:
            failures.append(str(exc))
    return batch, failures


def _segment(loaded: tuple[list[tuple[Job, np.ndarray]], list[str]], predictor: Predictor,
             args: argparse.Namespace) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(mask, probability grey levels or None) per image that :func:`_read_batch` read, as ``--save-prob`` asks."""
    images = [image for _, image in loaded[0]]
    if args.save_prob:
        return [(mask, quantize_prob(prob, args.prob_bits))
                for mask, prob in predictor.predict_with_prob(images, tta=args.tta)]
    return [(mask, None) for mask in predictor.predict(images, tta=args.tta)]


def predict_jobs(jobs: list[Job], predictor: Predictor, args: argparse.Namespace, run: Run) -> None:
    """Segment the jobs batch by batch; unreadable images are recorded and skipped. The next batch is
    decoded while this one's outputs are encoded and written (:func:`utils.inference.pipeline.read_ahead`)."""
    out_dir = Path(args.out)
    palette = make_palette(predictor.num_classes)
    progress = tqdm(total=len(jobs), unit="img", disable=len(jobs) < 2, file=sys.stderr)
    segment = partial(_segment, predictor=predictor, args=args)
    for _, (batch, failures), results in read_ahead(jobs, predictor.batch_size, _read_batch, segment):
        run.failures += failures
        progress.update(len(failures))
        for (job, image), (mask, prob) in zip(batch, results, strict=True):
            save_outputs(image, mask, job.source, out_dir / job.relative, args, predictor, palette, run, prob)
            run.segmented += 1
            progress.update(1)
    progress.close()


def interactive(predictor: Predictor, args: argparse.Namespace, run: Run) -> None:
    """Ask for image file names until an empty line or end of input, like the original predict.py."""
    while True:
        try:
            name = input("Input image filename (empty line to quit): ").strip()
        except EOFError:
            break
        if not name:
            break
        jobs, failures = find_images([name], Path(args.out), args.save_mask, args.save_prob)
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
