"""Segmentation metrics: a streaming confusion matrix, the scores derived from it, and the report.

Rows of the confusion matrix are ground truth and columns are predictions, counted over the
pixels whose ground truth lies in ``[0, num_classes)``; everything else (255 = ignore) is left
out. ``score_folders`` goes one step further and refuses label values above the classes other
than 255, like ``utils.data``: they mean a wrong class count, not pixels to ignore.

A per-class ratio whose denominator is 0 is *undefined* (NaN), not 0: a class that appears
neither in the ground truth nor in the prediction says nothing about the model, so it is left
out of the means, printed as "n/a" and written as JSON ``null``. (The original tutorial scored
such classes as 0, which drags mIoU down on every dataset with absent classes.)

``score_folders`` scores folders of index PNGs quickly: a thread pool decodes them (raw
inflate for unfiltered PNGs, else OpenCV) and counts each pair with one OpenCV ``calcHist``;
none of these holds the GIL, so the work spreads over the cores (see BENCHMARKS.md, "Scoring
speed").

matplotlib is imported only when a report is drawn: the training loop imports this module
for the confusion matrix and should not pay for it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import threading
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError


class ConfusionMatrix:
    """A (C, C) int64 pixel confusion matrix accumulated on ``device`` (rows: ground truth)."""

    def __init__(self, num_classes: int, device: str | torch.device = "cpu") -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.matrix = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64, device=device)

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Count one batch (or image) of predicted class indices against its ground truth.

        ``pred`` and ``target`` are integer maps of the same shape; target pixels outside
        ``[0, num_classes)`` are ignored. A prediction outside the classes is a bug upstream
        (or a foreign PNG) and raises ``ValueError`` rather than being folded into another cell.
        """
        c = self.num_classes
        if self.matrix.device.type == "cpu":
            # numpy's bincount is several times faster than torch's on the CPU.
            counts = torch.from_numpy(_count_pairs(_as_numpy(pred), _as_numpy(target), c))
        else:
            counts = _count_pairs_torch(torch.as_tensor(pred, device=self.matrix.device),
                                        torch.as_tensor(target, device=self.matrix.device), c)
        self.matrix += counts.to(self.matrix.device)

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


def _as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _check_pred_range(low: int, high: int, num_classes: int) -> None:
    if low < 0 or high >= num_classes:
        raise ValueError(f"prediction values must lie in [0, {num_classes}), found {low}..{high}")


def _count_pairs(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts of (target, pred) pairs over targets in [0, C), with numpy."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {target.shape}")
    pred, target = pred.ravel(), target.ravel()
    keep = (target >= 0) & (target < num_classes)
    if not keep.all():
        pred, target = pred[keep], target[keep]
    c = num_classes
    if pred.size == 0:
        return np.zeros((c, c), dtype=np.int64)
    # An out-of-range prediction would otherwise land silently in another cell of the matrix.
    _check_pred_range(int(pred.min()), int(pred.max()), c)
    return np.bincount(target.astype(np.intp) * c + pred, minlength=c * c).reshape(c, c).astype(np.int64)


def _count_pairs_torch(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The same as :func:`_count_pairs` on the tensors' device (one host sync for the range check)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    c = num_classes
    # int64 before arithmetic: uint8 would wrap in target * C.
    target = target.reshape(-1).long()
    pred = pred.reshape(-1).long()
    keep = (target >= 0) & (target < c)
    target, pred = target[keep], pred[keep]
    if pred.numel() == 0:
        return torch.zeros((c, c), dtype=torch.int64, device=pred.device)
    low, high = torch.aminmax(pred)
    _check_pred_range(int(low), int(high), c)
    return torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)


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
    hist = _as_numpy(matrix).astype(np.float64)
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
    hist = _as_numpy(matrix).astype(np.int64)
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
    ax.set_ylim(n - 0.5, -0.5)  # first class on top; also keeps a trailing bar-less (n/a) row in view
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
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="lightgrey")
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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PROBE_ROWS = 16
_CALCHIST_MAX_PIXELS = 2**24  # float32 bins count exactly up to here


def read_index_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel 8-bit PNG of class indices (grey or palette) as (H, W) uint8.

    Raises ``UserError`` naming the file for colour, 16-bit, unreadable or corrupt files.
    """
    return np.ascontiguousarray(_read_index(Path(path)))


def _read_index(path: Path) -> np.ndarray:
    """``read_index_png`` without the final copy: the array may be a view with padded rows.

    Three decoders, fastest first, none of which holds the GIL while it works, so a thread
    pool scales over the cores:

    1. 8-bit PNGs whose rows are stored unfiltered (palette PNGs as PIL and most tools write
       them, hence VOC labels and our predictions): raw inflate of the pixel stream, whose
       rows are the indices. This skips zlib's Adler-32 pass over the output, a sizeable
       share of the decode; the PNG's own CRC-32 of every IDAT chunk is checked instead.
    2. Other 8-bit grey or palette PNGs: OpenCV. It expands palettes to colour, so palette
       files are first relabelled as grey in memory (see ``_palette_as_grey``).
    3. Anything else (1/2/4-bit, non-PNG): PIL, which also explains what is wrong.
    """
    try:
        with open(path, "rb", buffering=0) as handle:
            data = handle.readall()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    # IHDR sits right after the signature: bit depth at byte 24, colour type at byte 25.
    if data[:8] == _PNG_SIGNATURE and len(data) > 25 and data[24] == 8 and data[25] in (0, 3):
        chunks = _png_chunks(data)
        if chunks is not None:
            array = _inflate_unfiltered(data, chunks)
            if array is not None:
                return array
            png = data if data[25] == 0 else _palette_as_grey(data, chunks)
            array = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
            if array is not None and array.ndim == 2 and array.dtype == np.uint8:
                return array
    return _read_index_pil(path, data)


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """``(type, start, end)`` of each chunk's payload up to IEND, or None if the file is cut short."""
    chunks = []
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            return None
        chunks.append((kind, pos + 8, end))
        if kind == b"IEND":
            return chunks if chunks[0][0] == b"IHDR" and end - chunks[0][1] >= 13 else None
        pos = end + 4
    return None


def _inflate_unfiltered(data: bytes, chunks: list[tuple[bytes, int, int]]) -> np.ndarray | None:
    """The (H, W) pixels of a non-interlaced 8-bit one-channel PNG whose rows are all unfiltered.

    Returns None whenever this shortcut does not apply (filtered or interlaced rows, a bad
    CRC, a damaged stream), and the caller falls back to a full decoder, which reports errors.
    """
    start = chunks[0][1]
    width = int.from_bytes(data[start:start + 4], "big")
    height = int.from_bytes(data[start + 4:start + 8], "big")
    # compression method, filter method and interlace must all be 0 (deflate, adaptive, none).
    # A damaged header must not make us reserve gigabytes: leave odd sizes to the full decoder.
    if data[start + 10:start + 13] != b"\x00\x00\x00" or not 0 < (width + 1) * height <= 2**31:
        return None
    parts = []
    for kind, begin, end in chunks:
        if kind == b"IDAT":
            if zlib.crc32(data[begin - 4:end]) != int.from_bytes(data[end:end + 4], "big"):
                return None
            parts.append(data[begin:end])
    stream = b"".join(parts)
    # A zlib stream: deflate method, no preset dictionary, valid header check.
    if len(stream) < 2 or stream[0] & 0x0F != 8 or stream[1] & 0x20 or ((stream[0] << 8) | stream[1]) % 31:
        return None
    stride = width + 1  # each row is a filter-type byte and then the pixels
    try:
        # Encoders filter grey rows but (as the PNG spec advises) rarely palette rows: for grey
        # files look at the first rows' filter bytes before inflating everything, so filtered
        # ones go straight to the full decoder.
        if data[start + 9] == 0:
            head = zlib.decompressobj(-15).decompress(stream[2:], stride * min(height, _PROBE_ROWS))
            if any(head[::stride]):
                return None
        # One-shot decompress releases the GIL (decompressobj does not); wbits=-15 reads the raw
        # deflate data, leaving out the zlib header and the Adler-32 trailer.
        raw = zlib.decompress(stream[2:], -15, stride * height)
    except zlib.error:
        return None
    if len(raw) != stride * height:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride)
    if rows[:, 0].any():
        return None
    return rows[:, 1:]


def _palette_as_grey(data: bytes, chunks: list[tuple[bytes, int, int]]) -> bytes:
    """The same 8-bit PNG with its colour type set to grey.

    In an 8-bit palette PNG every pixel is stored as its one-byte palette index, exactly like
    an 8-bit grey pixel, so relabelling IHDR (and dropping the palette-only chunks such as
    PLTE and tRNS) makes any PNG decoder return the indices themselves. Only this in-memory
    copy is changed.
    """
    out = [data[:8]]
    for kind, begin, end in chunks:
        if kind == b"IHDR":
            body = data[begin:begin + 9] + b"\x00" + data[begin + 10:end]
            out.append(data[begin - 8:begin] + body + zlib.crc32(kind + body).to_bytes(4, "big"))
        elif kind in (b"IDAT", b"IEND"):
            out.append(data[begin - 8:end + 4])
    return b"".join(out)


def _read_index_pil(path: Path, data: bytes) -> np.ndarray:
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


def _score_pair(gt_path: Path, pred_path: Path, num_classes: int) -> np.ndarray:
    """Confusion counts (C, C) of one prediction/ground-truth pair, after checking both files."""
    gt = _read_index(gt_path)
    pred = _read_index(pred_path)
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
) -> np.ndarray:
    """Confusion matrix (int64, rows = ground truth) of ``pred_dir/<stem>.png`` against ``gt_dir/<stem>.png``.

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
                counts += _score_pair(gt_dir / f"{stem}.png", pred_dir / f"{stem}.png", num_classes)
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
