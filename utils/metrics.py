"""Segmentation metrics: a streaming confusion matrix, the scores derived from it, and the report.

Rows of the confusion matrix are ground truth and columns are predictions, counted over the
pixels whose ground truth lies in ``[0, num_classes)``; everything else (255 = ignore, stray
values) is left out. A per-class ratio whose denominator is 0 is *undefined* (NaN), not 0: a
class that appears neither in the ground truth nor in the prediction says nothing about the
model, so it is left out of the means, printed as "n/a" and written as JSON ``null``. (The
original tutorial scored such classes as 0, which drags mIoU down on every dataset with
absent classes.)

``score_folders`` scores folders of index PNGs quickly: it decodes with OpenCV where it can
(much faster than PIL and it releases the GIL, so a thread pool scales over the cores) and
accumulates each image with a single ``bincount``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from utils.errors import UserError

logger = logging.getLogger(__name__)


class ConfusionMatrix:
    """A (C, C) int64 pixel confusion matrix accumulated on ``device`` (rows: ground truth)."""

    def __init__(self, num_classes: int, device: str | torch.device = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matrix = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64, device=device)

    def reset(self) -> None:
        """Zero the counts (e.g. before the next validation epoch)."""
        self.matrix.zero_()

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Count one batch (or image) of predicted class indices against its ground truth.

        ``pred`` and ``target`` are integer maps of the same shape; target pixels outside
        ``[0, num_classes)`` are ignored. A prediction outside the classes is a bug upstream
        (or a foreign PNG) and raises ``ValueError`` rather than being folded into another cell.
        """
        device = self.matrix.device
        pred_t = torch.as_tensor(pred, device=device)
        target_t = torch.as_tensor(target, device=device)
        if pred_t.shape != target_t.shape:
            raise ValueError(f"prediction shape {tuple(pred_t.shape)} != target shape {tuple(target_t.shape)}")
        c = self.num_classes
        # int64 before arithmetic: uint8 would wrap in target * C.
        target_t = target_t.reshape(-1).long()
        pred_t = pred_t.reshape(-1).long()
        keep = (target_t >= 0) & (target_t < c)
        target_t = target_t[keep]
        pred_t = pred_t[keep]
        if pred_t.numel() == 0:
            return
        # One host sync per update; worth it, since an out-of-range prediction would otherwise
        # land silently in the next row of the matrix.
        low, high = torch.aminmax(pred_t)
        if int(low) < 0 or int(high) >= c:
            raise ValueError(f"prediction values must lie in [0, {c}), found {int(low)}..{int(high)}")
        counts = torch.bincount(target_t * c + pred_t, minlength=c * c)
        self.matrix += counts.reshape(c, c)

    def all_reduce(self) -> None:
        """Sum the matrix over all ranks; a no-op unless torch.distributed is initialised."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.matrix, op=torch.distributed.ReduceOp.SUM)

    def numpy(self) -> np.ndarray:
        """The counts as an int64 numpy array on the host."""
        return self.matrix.detach().cpu().numpy().astype(np.int64, copy=False)

    def scores(self) -> Scores:
        """The per-class and overall scores of the counts so far."""
        return compute_scores(self.numpy())


@dataclass
class Scores:
    """Scores of a confusion matrix. Per-class arrays are float64 with NaN where undefined.

    ``miou`` and ``mpa`` are means over the defined classes only; every overall figure is a
    fraction in [0, 1] (NaN when no pixel was counted).
    """

    iou: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    f1: np.ndarray
    miou: float
    mpa: float
    accuracy: float
    fwiou: float
    gt_pixels: np.ndarray
    pred_pixels: np.ndarray


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0."""
    out = np.full(numerator.shape, np.nan, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    """Mean of the defined entries; NaN (without numpy's warning) when none is defined."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def compute_scores(matrix: np.ndarray | torch.Tensor) -> Scores:
    """IoU, recall (= per-class pixel accuracy), precision, F1 and the overall scores of a matrix."""
    hist = torch.as_tensor(matrix).cpu().numpy().astype(np.float64) if isinstance(matrix, torch.Tensor) \
        else np.asarray(matrix, dtype=np.float64)
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {hist.shape}")
    tp = np.diag(hist)
    gt_pixels = hist.sum(axis=1)
    pred_pixels = hist.sum(axis=0)
    total = hist.sum()
    iou = _ratio(tp, gt_pixels + pred_pixels - tp)
    recall = _ratio(tp, gt_pixels)
    precision = _ratio(tp, pred_pixels)
    # 2TP / (2TP + FP + FN) equals the harmonic mean of precision and recall, and stays defined
    # (as 0) when a class is in the ground truth but never predicted.
    f1 = _ratio(2 * tp, gt_pixels + pred_pixels)
    accuracy = float(tp.sum() / total) if total > 0 else math.nan
    # Classes without ground-truth pixels have weight 0, so only present classes contribute.
    present = gt_pixels > 0
    fwiou = float((gt_pixels[present] / total * iou[present]).sum()) if total > 0 else math.nan
    return Scores(
        iou=iou,
        recall=recall,
        precision=precision,
        f1=f1,
        miou=_nanmean(iou),
        mpa=_nanmean(recall),
        accuracy=accuracy,
        fwiou=fwiou,
        gt_pixels=gt_pixels.astype(np.int64),
        pred_pixels=pred_pixels.astype(np.int64),
    )


def _percent(value: float) -> str:
    """A fraction as a percentage with two decimals, "n/a" when undefined."""
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}"


def format_table(scores: Scores, class_names: Sequence[str]) -> str:
    """The per-class table (name, IoU, recall, precision, F1 in %, ground-truth pixels) as text."""
    _check_names(scores, class_names)
    width = max([len("class"), *(len(name) for name in class_names)])
    header = f"{'class':<{width}}  {'IoU':>7}  {'Recall':>7}  {'Prec.':>7}  {'F1':>7}  {'GT pixels':>12}"
    lines = [header, "-" * len(header)]
    for i, name in enumerate(class_names):
        lines.append(
            f"{name:<{width}}  {_percent(scores.iou[i]):>7}  {_percent(scores.recall[i]):>7}  "
            f"{_percent(scores.precision[i]):>7}  {_percent(scores.f1[i]):>7}  {int(scores.gt_pixels[i]):>12}"
        )
    return "\n".join(lines)


def format_summary(scores: Scores) -> str:
    """The one-line summary: mIoU, mPA, pixel accuracy and frequency-weighted IoU in %."""
    undefined = int(np.isnan(scores.iou).sum())
    line = (
        f"mIoU {_percent(scores.miou)}%  mPA {_percent(scores.mpa)}%  "
        f"accuracy {_percent(scores.accuracy)}%  fwIoU {_percent(scores.fwiou)}%"
    )
    if undefined:
        line += f"  ({undefined} class(es) absent from ground truth and prediction: n/a, not in the means)"
    return line


def _check_names(scores: Scores, class_names: Sequence[str]) -> None:
    if len(class_names) != len(scores.iou):
        raise ValueError(f"{len(class_names)} class names for {len(scores.iou)} classes")


def _json_number(value: float) -> float | None:
    """JSON has no NaN: undefined values become null."""
    return None if math.isnan(value) else float(value)


def write_report(
    scores: Scores,
    matrix: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    out_dir: str | os.PathLike,
) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.csv, the bar charts and the heat map into ``out_dir``.

    Returns the written paths by short name (``json``, ``csv``, ``miou``, ``mpa``, ``recall``,
    ``precision``, ``heatmap``).
    """
    _check_names(scores, class_names)
    hist = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    hist = hist.astype(np.int64)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "json": out / "metrics.json",
        "csv": out / "confusion_matrix.csv",
        "miou": out / "mIoU.png",
        "mpa": out / "mPA.png",
        "recall": out / "Recall.png",
        "precision": out / "Precision.png",
        "heatmap": out / "confusion_matrix.png",
    }
    report = {
        "miou": _json_number(scores.miou),
        "mpa": _json_number(scores.mpa),
        "accuracy": _json_number(scores.accuracy),
        "fwiou": _json_number(scores.fwiou),
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "pixels": int(hist.sum()),
        "per_class": [
            {
                "name": name,
                "iou": _json_number(scores.iou[i]),
                "recall": _json_number(scores.recall[i]),
                "precision": _json_number(scores.precision[i]),
                "f1": _json_number(scores.f1[i]),
                "gt_pixels": int(scores.gt_pixels[i]),
                "pred_pixels": int(scores.pred_pixels[i]),
            }
            for i, name in enumerate(class_names)
        ],
    }
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["gt \\ pred", *class_names])
        for name, row in zip(class_names, hist, strict=True):
            writer.writerow([name, *(int(v) for v in row)])
    _bar_chart(scores.iou, class_names, f"mIoU = {_percent(scores.miou)}%", "Intersection over Union",
               paths["miou"])
    _bar_chart(scores.recall, class_names, f"mPA = {_percent(scores.mpa)}%", "Pixel accuracy (recall)",
               paths["mpa"])
    _bar_chart(scores.recall, class_names, f"mRecall = {_percent(scores.mpa)}%", "Recall", paths["recall"])
    _bar_chart(scores.precision, class_names,
               f"mPrecision = {_percent(_nanmean(scores.precision))}%", "Precision", paths["precision"])
    _heat_map(hist, class_names, paths["heatmap"])
    return paths


def _new_figure(width: float, height: float):
    """A pyplot-free Agg figure: no global state, no display needed, safe in any thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _bar_chart(values: np.ndarray, class_names: Sequence[str], title: str, xlabel: str, path: Path) -> None:
    """Horizontal bars per class (in %), undefined classes marked "n/a" instead of a bar."""
    n = len(class_names)
    fig = _new_figure(8.0, max(2.5, 0.32 * n + 1.2))
    ax = fig.add_subplot()
    positions = np.arange(n)
    defined = ~np.isnan(values)
    percents = np.where(defined, values * 100, 0.0)
    ax.barh(positions[defined], percents[defined], color="royalblue")
    for y, value, ok in zip(positions, percents, defined, strict=True):
        if ok:
            ax.text(min(value, 100) + 1, y, f"{value:.2f}", va="center", fontsize=8)
        else:
            ax.text(1, y, "n/a", va="center", fontsize=8, color="grey", style="italic")
    ax.set_yticks(positions, labels=list(class_names), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 112)
    ax.set_xlabel(f"{xlabel} (%)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


def _heat_map(hist: np.ndarray, class_names: Sequence[str], path: Path) -> None:
    """Row-normalised confusion matrix (each row: where that class's pixels went).

    Rows without ground truth have nothing to normalise and are drawn grey.
    """
    import matplotlib

    n = len(class_names)
    row_sums = hist.sum(axis=1, keepdims=True)
    norm = np.full(hist.shape, np.nan)
    np.divide(hist, row_sums, out=norm, where=row_sums > 0)
    size = max(4.0, 0.45 * n + 2.5)
    fig = _new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["Blues"].copy()
    cmap.set_bad("lightgrey")
    image = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the ground-truth row")
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels=list(class_names), rotation=90, fontsize=7)
    ax.set_yticks(ticks, labels=list(class_names), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    ax.set_title("Confusion matrix (row-normalised)")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if row_sums[i, 0] == 0:
                    if i == j:
                        ax.text(j, i, "n/a", ha="center", va="center", fontsize=6, color="dimgrey")
                elif hist[i, j]:
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path)


def read_index_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel 8-bit PNG of class indices (grey or palette) as (H, W) uint8.

    Grey PNGs are decoded by OpenCV, several times faster than PIL. OpenCV expands palette
    PNGs (how VOC ships its labels) to colour, so those go through PIL, which keeps the indices.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    # IHDR sits right after the 8-byte signature: bit depth at byte 24, colour type at byte 25.
    is_png = data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 25
    if is_png and data[24] == 8 and data[25] == 0:
        import cv2

        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        if array is None:
            raise UserError(f"cannot decode {path}: the PNG is corrupt")
        return array
    return _read_index_pil(path, data)


def _read_index_pil(path: Path, data: bytes) -> np.ndarray:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("L", "P"):
                raise UserError(
                    f"{path} is a {image.mode} image; class maps must be single-channel 8-bit "
                    "(grey or palette) PNGs of class indices"
                )
            return np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"cannot decode {path}: {exc}") from exc


def _size(array: np.ndarray) -> str:
    return f"{array.shape[1]}x{array.shape[0]}"


def _score_pair(gt_path: Path, pred_path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Confusion counts of one prediction/ground-truth pair, plus the stray ground-truth values."""
    gt = read_index_png(gt_path)
    pred = read_index_png(pred_path)
    if gt.shape != pred.shape:
        raise UserError(
            f"prediction {pred_path} is {_size(pred)} (WxH) but its ground truth {gt_path} is {_size(gt)}; "
            "predictions must be at the original resolution"
        )
    # gt * 256 + pred fits uint16 and indexes the full 256x256 joint histogram, so a single
    # bincount both counts the pixels and reveals out-of-range predictions, whatever the labels.
    joint = np.bincount(((gt.astype(np.uint16) << 8) | pred).ravel(), minlength=65536).reshape(256, 256)
    bad = np.flatnonzero(joint[:, num_classes:].any(axis=0)) + num_classes
    if bad.size:
        raise UserError(
            f"prediction {pred_path} has values {_list(bad.tolist())} outside the {num_classes} classes "
            f"[0, {num_classes}); check --num-classes / --classes"
        )
    rows = joint.any(axis=1)
    rows[:num_classes] = False
    rows[255] = False
    return joint[:num_classes, :num_classes].astype(np.int64), np.flatnonzero(rows)


def _list(values: Sequence, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def score_folders(
    gt_dir: str | os.PathLike,
    pred_dir: str | os.PathLike,
    stems: Sequence[str],
    num_classes: int,
    workers: int | None = None,
) -> np.ndarray:
    """Confusion matrix (int64, rows = ground truth) of ``pred_dir/<stem>.png`` against ``gt_dir/<stem>.png``.

    Every file is checked before any decoding starts, so a missing file is reported at once.
    Raises ``UserError`` naming the file for: a missing prediction folder, missing ground truth
    or predictions, a size mismatch (both sizes given), prediction values outside the classes,
    and unreadable or non-index PNGs. Ground-truth values outside the classes other than 255
    are ignored like 255, with a warning since they usually mean a wrong class count.
    """
    gt_dir, pred_dir = Path(gt_dir), Path(pred_dir)
    if not pred_dir.is_dir():
        raise UserError(f"prediction folder {pred_dir} not found; write it with --mode predict first")
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
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    stray: set[int] = set()
    workers = workers or min(8, os.cpu_count() or 1)

    def job(stem: str) -> tuple[np.ndarray, np.ndarray]:
        return _score_pair(gt_dir / f"{stem}.png", pred_dir / f"{stem}.png", num_classes)

    # map() yields in split order, so the first bad file in the split is the one reported.
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for counts, stray_values in pool.map(job, stems):
            matrix += counts
            stray.update(stray_values.tolist())
    if stray:
        logger.warning(
            "ground truth in %s has values %s outside the %d classes (and not 255); they were ignored. "
            "Check --num-classes / --classes.", gt_dir, _list(sorted(stray)), num_classes,
        )
    return matrix
