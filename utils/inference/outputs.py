"""predict.py's outputs: rendered images, class-index PNGs, probability PNGs and the per-class pixel counts.

A :class:`Run` collects what was written, the counts and the failures to report at the end;
an input is never overwritten by its own result.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from utils.errors import UserError
from utils.inference.inputs import mask_path, prob_path
from utils.inference.options import OutputOptions
from utils.inference.visualize import class_counts, format_counts, mix, save_index_png, write_counts_csv


@dataclass
class Run:
    """What happened in a run: outputs written, per-class counts, failures to report at the end."""

    written: list[Path] = field(default_factory=list)
    segmented: int = 0
    failures: list[str] = field(default_factory=list)
    counts: np.ndarray | None = None
    per_image: list[tuple[str, np.ndarray]] = field(default_factory=list)


def write_image(rgb: np.ndarray, path: Path) -> None:
    """Save an RGB array; the format follows the extension (as the input's name is kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []
    if not cv2.imwrite(str(path), bgr, params):
        raise UserError(f"cannot write {path}: check that the folder is writable")


def quantize_prob(prob: torch.Tensor, bits: int = 8) -> np.ndarray:
    """A probability map (H, W) in [0, 1] as grey levels: ``round(p * 255)`` as uint8, or with ``bits`` 16
    ``round(p * 65535)`` as uint16; computed on the map's device, so only the small array reaches the host."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16; got {bits}")
    top, dtype = (255, torch.uint8) if bits == 8 else (65535, torch.int32)
    levels = (prob.float() * top).round_().clamp_(0, top).to(dtype).cpu().numpy()
    return levels if bits == 8 else levels.astype(np.uint16)


def write_grey(levels: np.ndarray, path: Path) -> None:
    """Save a uint8 or uint16 single-channel array as an 8- or 16-bit grey PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), levels):
        raise UserError(f"cannot write {path}: check that the folder is writable")


def record(run: Run, name: str, mask: np.ndarray, num_classes: int) -> None:
    """Add the per-class pixel counts of ``mask`` to the run's total and to its per-image list as ``name``."""
    counts = class_counts(mask, num_classes)
    run.counts = counts if run.counts is None else run.counts + counts
    run.per_image.append((name, counts))


def save_outputs(image: np.ndarray, mask: np.ndarray, source: Path, target: Path, outputs: OutputOptions,
                 num_classes: int, palette: np.ndarray, run: Run, prob: np.ndarray | None = None) -> None:
    """Write the rendered image (and mask PNG, and ``prob``, grey levels of :func:`quantize_prob`, as
    ``<name>_prob.png``), count classes; never over the input itself."""
    if target.resolve() == source.resolve():
        raise UserError(f"refusing to overwrite the input {target}: choose another --out")
    write_image(mix(image, mask, outputs.mix, outputs.alpha, palette), target)
    run.written.append(target)
    if outputs.save_mask:
        index_png = mask_path(target)
        save_index_png(mask, index_png, palette)
        run.written.append(index_png)
    if prob is not None:
        grey = prob_path(target)
        write_grey(prob, grey)
        run.written.append(grey)
    if outputs.count:
        record(run, str(target), mask, num_classes)


def report_counts(run: Run, class_names: list[str], out_dir: Path) -> None:
    """``--count``: print the totals, write counts.csv and (for several images) counts_per_image.csv."""
    if run.counts is None:
        return
    print(format_counts(run.counts, class_names))
    path = write_counts_csv(run.counts, class_names, out_dir / "counts.csv")
    if len(run.per_image) > 1:
        per_image = out_dir / "counts_per_image.csv"
        # csv.writer quotes names holding commas or quotes (file names and class names may).
        with per_image.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", *class_names])
            for name, counts in run.per_image:
                writer.writerow([name, *(int(c) for c in counts)])
    print(f"counts saved to {path}")
