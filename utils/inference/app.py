"""The predict.py application: segment a batch of jobs, the interactive prompt, export.

``predict.py`` maps its flags to typed options (:mod:`utils.inference.cli`) and dispatches to these
functions and to :mod:`utils.inference.video` and :mod:`utils.inference.benchmark`; the
segmentation itself is :class:`~utils.inference.predictor.Predictor`.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.checkpoint import load_model
from utils.data.io import load_image
from utils.errors import UserError
from utils.inference.inputs import Job, find_images
from utils.inference.onnx_export import export_onnx
from utils.inference.options import OutputOptions
from utils.inference.outputs import Run, quantize_prob, save_outputs
from utils.inference.pipeline import read_ahead
from utils.inference.predictor import Predictor
from utils.inference.quantize import QuantizeOptions, calibration_paths, int8_warning, quantize_onnx
from utils.inference.visualize import make_palette


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
             outputs: OutputOptions) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(mask, probability grey levels or None) per image that :func:`_read_batch` read, as ``save_prob`` asks."""
    images = [image for _, image in loaded[0]]
    if outputs.save_prob:
        return [(mask, quantize_prob(prob, outputs.prob_bits)) for mask, prob in predictor.predict_with_prob(images)]
    return [(mask, None) for mask in predictor.predict(images)]


def predict_jobs(jobs: list[Job], predictor: Predictor, outputs: OutputOptions, run: Run) -> None:
    """Segment the jobs batch by batch; unreadable images are recorded and skipped. The next batch is
    decoded while this one's outputs are encoded and written (:func:`utils.inference.pipeline.read_ahead`)."""
    palette = make_palette(predictor.num_classes)
    progress = tqdm(total=len(jobs), unit="img", disable=len(jobs) < 2, file=sys.stderr)
    segment = partial(_segment, predictor=predictor, outputs=outputs)
    for _, (batch, failures), results in read_ahead(jobs, predictor.batch_size, _read_batch, segment):
        run.failures += failures
        progress.update(len(failures))
        for (job, image), (mask, prob) in zip(batch, results, strict=True):
            save_outputs(image, mask, job.source, outputs.out_dir / job.relative, outputs, predictor.num_classes,
                         palette, run, prob)
            run.segmented += 1
            progress.update(1)
    progress.close()


def interactive(predictor: Predictor, outputs: OutputOptions, run: Run) -> None:
    """Ask for image file names until an empty line or end of input, like the original predict.py."""
    while True:
        try:
            name = input("Input image filename (empty line to quit): ").strip()
        except EOFError:
            break
        if not name:
            break
        jobs, failures = find_images([name], outputs.out_dir, outputs.save_mask, outputs.save_prob)
        for failure in failures:
            print(f"error: {failure}", file=sys.stderr)
        before = len(run.written)
        try:
            predict_jobs(jobs, predictor, outputs, run)
        except UserError as exc:
            run.failures.append(str(exc))
        for failure in run.failures:
            print(f"error: {failure}", file=sys.stderr)
        run.failures.clear()
        for path in run.written[before:]:
            print(f"saved {path}")


def export(weights: str | Path, target: str | Path, *, class_names: Sequence[str] | None = None,
           downsample_factor: int | None = None, input_size: Sequence[int] | None = None, dynamic: bool = False,
           opset: int = 17, simplify: bool = True, exporter: str = "torchscript",
           int8: QuantizeOptions | None = None) -> None:
    """Export the ``weights`` model to ONNX at ``target``, verify it, and only then place it there; with ``int8``,
    quantize the verified float graph (:func:`utils.inference.quantize.quantize_onnx`) and place that instead."""
    if Path(target).resolve() == Path(weights).resolve():
        raise UserError(f"--export-onnx {target} is the --weights file itself: choose another name, e.g. model.onnx")
    model, spec = load_model(weights, device="cpu", num_classes=len(class_names) if class_names else None,
                             class_names=list(class_names) if class_names else None,
                             downsample_factor=downsample_factor, input_size=input_size)
    size = spec.input_size
    if int8 is not None:
        calibration_paths(int8)  # a bad --calib-data fails before the export's minute of work
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".int8-", dir=Path(target).parent) as tmp:
            float_path = Path(tmp) / "fp32.onnx"
            checks = export_onnx(model, float_path, size, spec=spec, dynamic=dynamic, opset=opset, simplify=simplify,
                                 exporter=exporter)
            for check in checks:
                print(f"verified fp32 {check}")
            warning = int8_warning(int8)
            if warning:
                print(f"warning: {warning}", file=sys.stderr)
            report = quantize_onnx(float_path, target, int8)
        shape = 'dynamic' if dynamic else f'static {size[0]}x{size[-1]}'
        print(f"exported {target} (int8 QDQ, opset {opset}, {shape})")
        print(report)
        return
    # export_onnx raises (and writes nothing) when ONNX Runtime disagrees with PyTorch.
    checks = export_onnx(model, target, size, spec=spec, dynamic=dynamic, opset=opset, simplify=simplify,
                         exporter=exporter)
    print(f"exported {target} (opset {opset}, {'dynamic' if dynamic else 'static'} "
          f"{'batch/height/width' if dynamic else f'{size[0]}x{size[-1]}'})")
    for check in checks:
        print(f"verified {check}")
