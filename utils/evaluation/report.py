"""The evaluation report: the per-class table and summary line, metrics.json, confusion_matrix.csv.

:func:`write_report` also draws the charts of :mod:`utils.evaluation.plots`. Undefined (NaN)
scores print as "n/a" and are written as JSON ``null``; :func:`format_percent` is the one
percentage formatter, also used by the binary tables of :mod:`utils.evaluation.threshold`.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.evaluation.plots import bar_chart, heat_map, sweep_chart
from utils.evaluation.scores import Scores, as_numpy, nanmean


def format_percent(value: float | None, sign: str = "") -> str:
    """A fraction as a percentage with two decimals followed by ``sign`` (e.g. "%"), or "n/a" (no sign)
    when undefined (NaN or None).

    None is what metrics.json rows hold for an undefined score (:func:`_json_number`).
    """
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}{sign}"


def format_table(scores: Scores, class_names: Sequence[str]) -> str:
    """The per-class table (name, IoU, recall, precision, Dice in %, ground-truth pixels) as text.

    Dice (2TP / (2TP + FP + FN)) is the same number as F1, the harmonic mean of precision and recall.
    """
    _check_names(scores, class_names)
    width = max([len("class"), *(len(name) for name in class_names)])
    header = f"{'class':<{width}}  {'IoU':>7}  {'Recall':>7}  {'Prec.':>7}  {'Dice':>7}  {'GT pixels':>12}"
    lines = [header, "-" * len(header)]
    for i, name in enumerate(class_names):
        lines.append(
            f"{name:<{width}}  {format_percent(scores.iou[i]):>7}  {format_percent(scores.recall[i]):>7}  "
            f"{format_percent(scores.precision[i]):>7}  {format_percent(scores.f1[i]):>7}  "
            f"{int(scores.gt_pixels[i]):>12}"
        )
    return "\n".join(lines)


def format_summary(scores: Scores) -> str:
    """The one-line summary: mIoU, mPA, pixel accuracy and frequency-weighted IoU in %."""
    undefined = int(np.isnan(scores.iou).sum())
    line = (
        f"mIoU {format_percent(scores.miou, '%')}  mPA {format_percent(scores.mpa, '%')}  "
        f"accuracy {format_percent(scores.accuracy, '%')}  fwIoU {format_percent(scores.fwiou, '%')}"
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
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.csv, the bar charts and the heat map into ``out_dir``.

    ``extra`` entries are added to metrics.json (a binary model's foreground scores and its
    threshold sweep); a ``sweep`` among them is also drawn as threshold_sweep.png.
    Returns the written paths by short name (``json``, ``csv``, ``miou``, ``mpa``, ``recall``,
    ``precision``, ``heatmap``, and ``sweep`` when drawn).
    """
    _check_names(scores, class_names)
    hist = as_numpy(matrix).astype(np.int64)
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
                "dice": _json_number(scores.f1[i]),
                "f1": _json_number(scores.f1[i]),
                "gt_pixels": int(scores.gt_pixels[i]),
                "pred_pixels": int(scores.pred_pixels[i]),
            }
            for i, name in enumerate(class_names)
        ],
    }
    report.update(extra or {})
    if report.get("sweep"):
        paths["sweep"] = out / "threshold_sweep.png"
        sweep_chart(report["sweep"], paths["sweep"], report.get("threshold"))
    paths["json"].write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["gt \\ pred", *class_names])
        for name, row in zip(class_names, hist, strict=True):
            writer.writerow([name, *(int(v) for v in row)])
    bar_chart(scores.iou, class_names, f"mIoU = {format_percent(scores.miou, '%')}", "Intersection over Union",
               paths["miou"])
    bar_chart(scores.recall, class_names, f"mPA = {format_percent(scores.mpa, '%')}", "Pixel accuracy (recall)",
               paths["mpa"])
    bar_chart(scores.recall, class_names, f"mRecall = {format_percent(scores.mpa, '%')}", "Recall", paths["recall"])
    bar_chart(scores.precision, class_names,
               f"mPrecision = {format_percent(nanmean(scores.precision), '%')}", "Precision", paths["precision"])
    heat_map(hist, class_names, paths["heatmap"])
    return paths
