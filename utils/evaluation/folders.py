"""Scoring folders of index PNGs: a confusion matrix of predictions against ground truth.

A thread pool decodes the pairs (:mod:`utils.evaluation.png`) and counts each with one OpenCV
``calcHist``; none of these holds the GIL, so the work spreads over the cores (see
BENCHMARKS.md, "Scoring speed"). Label values above the classes other than 255 are refused,
like :class:`~utils.data.dataset.SegmentationDataset` does: they mean a wrong class count,
not pixels to ignore.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from utils.data.label_map import LabelMap
from utils.errors import UserError
from utils.evaluation.png import read_index_view

_CALCHIST_MAX_PIXELS = 2**24  # float32 bins count exactly up to here


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _score_pair(gt_path: Path, pred_path: Path, num_classes: int, lut: np.ndarray | None = None) -> np.ndarray:
    """Confusion counts (C, C) of one prediction/ground-truth pair, after checking both files;
    ``lut`` (a label map's table) remaps the ground truth as it is read."""
    gt = read_index_view(gt_path)
    if lut is not None:
        gt = lut[gt]
    pred = read_index_view(pred_path)
    if gt.shape != pred.shape:
        raise UserError(
            f"prediction {pred_path} is {_size(pred)} but its ground truth {gt_path} is {_size(gt)} "
            "(width x height); predictions must be at the ground truth's resolution"
        )
    # One vectorised scan; the offending values are only listed on the error path.
    if float(cv2.minMaxLoc(pred)[1]) >= num_classes:
        raise UserError(
            f"prediction {pred_path} holds value(s) {_list(np.unique(pred[pred >= num_classes]).tolist())} but "
            f"there are only {num_classes} classes (0..{num_classes - 1}); check --num-classes / --classes"
        )
    joint = _joint_histogram(gt, pred, num_classes)
    # Same rule as utils.data: a label value above the classes (other than 255) means a wrong
    # class count or a broken label, and silently ignoring it would inflate the scores.
    stray = np.flatnonzero(joint[num_classes:255].any(axis=1)) + num_classes
    if stray.size:
        raise UserError(
            f"ground truth {gt_path} holds value(s) {_list(stray.tolist())} but there are only {num_classes} "
            f"classes (0..{num_classes - 1}, 255 = ignore); check --num-classes / --classes"
        )
    return joint[:num_classes]


def _joint_histogram(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 counts of (ground truth, prediction) pairs: one row per label value below 255
    (every value when there are 256 classes), one column per class.

    Rows at and above ``num_classes`` expose stray label values; 255 (ignore) has no row.
    OpenCV's 2-D calcHist over unit bins does it in one pass without holding the GIL. It
    counts in float32, exact below 2**24 pixels, so bigger images take numpy's bincount.
    """
    c = num_classes
    rows = max(255, c)
    if gt.size < _CALCHIST_MAX_PIXELS:
        return cv2.calcHist([gt, pred], [0, 1], None, [rows, c], [0, rows, 0, c]).astype(np.int64)
    flat = np.bincount(gt.astype(np.intp).ravel() * c + pred.ravel(), minlength=256 * c)
    return flat.reshape(256, c)[:rows]


def _list(values: Sequence, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def score_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    stems: Sequence[str],
    num_classes: int,
    workers: int | None = None,
    label_map: LabelMap | None = None,
) -> np.ndarray:
    """Confusion matrix (int64, rows = ground truth) of ``pred_dir/<stem>.png`` against ``gt_dir/<stem>.png``.

    ``label_map`` remaps the ground-truth values as they are read (the files stay as they are).

    Every file is checked before any decoding starts, so a missing file is reported at once.
    Raises ``UserError`` naming the file for: a missing prediction folder, missing ground truth
    or predictions, a size mismatch (both sizes given), prediction values outside the classes,
    ground-truth values outside the classes other than 255 (255 is ignored), and unreadable or
    non-index PNGs.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    if not pred_dir.is_dir():
        raise UserError(f"prediction folder {pred_dir} not found: run get_miou.py --mode predict first "
                        "(or give the right --pred-dir)")
    if not gt_dir.is_dir():
        raise UserError(f"ground-truth folder {gt_dir} not found")
    if not stems:
        raise UserError("no images to score: the split is empty")
    gt_names, pred_names = set(os.listdir(gt_dir)), set(os.listdir(pred_dir))
    missing_gt = [s for s in stems if f"{s}.png" not in gt_names]
    if missing_gt:
        raise UserError(
            f"{len(missing_gt)} ground-truth file(s) named by the split are missing from {gt_dir}: "
            f"{_list([s + '.png' for s in missing_gt])}"
        )
    missing_pred = [s for s in stems if f"{s}.png" not in pred_names]
    if missing_pred:
        raise UserError(
            f"{len(missing_pred)} prediction(s) missing from {pred_dir}: {_list([s + '.png' for s in missing_pred])}"
            "; run --mode predict on this split first"
        )
    workers = max(1, min(workers or os.cpu_count() or 1, len(stems)))
    lut = None if label_map is None else label_map.lut
    # One task per worker over an interleaved share of the pairs: a future per pair costs more
    # than the bookkeeping is worth. A failing pair stops every worker once it passes that index,
    # and the error of the earliest bad pair in split order is the one raised.
    first_error: list = [len(stems), None]
    lock = threading.Lock()

    def work(indices: range) -> np.ndarray:
        counts = np.zeros((num_classes, num_classes), dtype=np.int64)
        for i in indices:
            if i > first_error[0]:
                break
            stem = stems[i]
            try:
                counts += _score_pair(gt_dir / f"{stem}.png", pred_dir / f"{stem}.png", num_classes, lut)
            except UserError as exc:
                with lock:
                    if i < first_error[0]:
                        first_error[:] = [i, exc]
                break
        return counts

    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(work, [range(w, len(stems), workers) for w in range(workers)]))
    if first_error[1] is not None:
        raise first_error[1]
    return np.sum(parts, axis=0, dtype=np.int64)
