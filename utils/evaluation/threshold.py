"""Binary models: pooled counts at every decision threshold in one pass, and the threshold to keep.

A binary model outputs a foreground probability per pixel; a pixel is foreground when it
reaches the threshold (``p >= t``). :class:`ThresholdSweep` keeps, on the device, a histogram
of the probabilities of the positive and of the negative pixels whose bin edges are the
thresholds themselves; the reversed cumulative sum of a histogram gives every threshold's
TP, FP, FN and TN at once. Counts are pooled over the whole split (as mIoU is), so the
foreground IoU, Dice, precision and recall at each threshold follow from one 2x2 matrix.
:func:`best_threshold` decides the threshold to keep, for training and validation
(:meth:`ThresholdSweep.best`) and for the row the sweep table marks (:func:`format_sweep`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
import torch

from nets.task import DEFAULT_THRESHOLD
from utils.evaluation.report import format_percent
from utils.evaluation.scores import Scores, as_numpy, compute_scores

# 0.05, 0.10, ..., 0.95
SWEEP_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))


def threshold_arg(text: str) -> float:
    """argparse type of ``--threshold``: a probability strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a foreground probability between 0 and 1, e.g. 0.5")
    return value


def best_threshold(thresholds: Sequence[float], ious: Sequence[float | None]) -> float | None:
    """The threshold with the highest foreground IoU, on a tie the one nearest 0.5; None when no IoU is
    defined (NaN or None: no foreground in the labels or the predictions).

    The one rule behind both the threshold training keeps (:meth:`ThresholdSweep.best`) and the row
    :func:`format_sweep` marks, so the table never points at another threshold than the one used.
    """
    defined = [(t, v) for t, v in zip(thresholds, ious, strict=True) if v is not None and not math.isnan(v)]
    if not defined:
        return None
    top = max(v for _, v in defined)
    return min((t for t, v in defined if v == top), key=lambda t: abs(t - DEFAULT_THRESHOLD))


class ThresholdSweep:
    """TP/FP/FN/TN of binary predictions at each of ``thresholds``, accumulated on ``device``.

    Args:
        thresholds: increasing thresholds in (0, 1).
        device: where the counts live (the predictor's device: no host transfer per image).
    """

    def __init__(self, thresholds: tuple[float, ...] = SWEEP_THRESHOLDS, device: str | torch.device = "cpu") -> None:
        if list(thresholds) != sorted(thresholds) or not all(0 < t < 1 for t in thresholds):
            raise ValueError(f"thresholds must increase and lie in (0, 1); got {thresholds}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.edges = torch.tensor(self.thresholds, dtype=torch.float32, device=device)
        # Rows: negative, positive, ignored pixels; column b counts pixels reaching exactly b thresholds.
        self.hist = torch.zeros((3, len(thresholds) + 1), dtype=torch.int64, device=device)

    def update(self, prob: torch.Tensor, target: torch.Tensor | np.ndarray) -> None:
        """Count one image: ``prob`` foreground probabilities and ``target`` labels {0, 1, 255} of one shape."""
        target = torch.as_tensor(target, device=self.hist.device).reshape(-1).long()
        prob = prob.to(self.hist.device, torch.float32).reshape(-1)
        if prob.shape != target.shape:
            raise ValueError(f"probability map of {prob.numel()} pixels for a label of {target.numel()}")
        # Ignored pixels (255, or any value above 1) go to a third row instead of being filtered out:
        # boolean indexing would make the host wait for the device on every image.
        row = torch.where(target <= 1, target, torch.full_like(target, 2))
        reached = torch.bucketize(prob, self.edges, right=True)
        width = self.hist.shape[1]
        self.hist += torch.bincount(row * width + reached, minlength=3 * width).view(3, width)

    def all_reduce(self) -> None:
        """Sum the counts over all ranks; a no-op unless torch.distributed is initialised."""
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(self.hist, op=torch.distributed.ReduceOp.SUM)

    def matrices(self) -> np.ndarray:
        """(T, 2, 2) int64 confusion matrices, one per threshold (rows ground truth: background, foreground)."""
        hist = as_numpy(self.hist)[:2].astype(np.int64)
        # at_least[:, b] = pixels reaching b thresholds or more; predicted foreground at threshold k (0-based)
        # means reaching threshold k, i.e. at least k + 1 of them.
        at_least = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
        fg = at_least[:, 1:]
        totals = hist.sum(axis=1, keepdims=True)
        out = np.empty((len(self.thresholds), 2, 2), dtype=np.int64)
        out[:, :, 1] = fg.T
        out[:, :, 0] = (totals - fg).T
        return out

    def scores(self) -> list[Scores]:
        """The :class:`Scores` of each threshold's 2x2 matrix (class 1 is the foreground)."""
        return [compute_scores(matrix) for matrix in self.matrices()]

    def best(self) -> float:
        """The sweep's :func:`best_threshold` (highest foreground IoU, on a tie the one nearest 0.5); 0.5
        when no threshold has a defined IoU (no foreground in the labels or the predictions)."""
        best = best_threshold(self.thresholds, [s.iou[1] for s in self.scores()])
        return DEFAULT_THRESHOLD if best is None else best


def binary_summary(scores: Scores, threshold: float | None) -> dict[str, float | None]:
    """Foreground IoU, Dice (= F1), precision, recall, pixel accuracy (NaN as None) and the threshold."""
    values = {"iou": scores.iou[1], "dice": scores.f1[1], "precision": scores.precision[1],
              "recall": scores.recall[1], "accuracy": scores.accuracy}
    out: dict[str, float | None] = {k: (None if math.isnan(v) else float(v)) for k, v in values.items()}
    out["threshold"] = threshold
    return out


def sweep_rows(sweep: ThresholdSweep) -> list[dict[str, float | None]]:
    """One :func:`binary_summary` per threshold of the sweep (what metrics.json's ``sweep`` holds)."""
    return [binary_summary(scores, t) for t, scores in zip(sweep.thresholds, sweep.scores(), strict=True)]


def format_binary(summary: dict[str, float | None]) -> str:
    """One line: the threshold and the foreground scores in %."""
    def pct(key: str) -> str:
        return format_percent(summary[key], "%")

    threshold = summary["threshold"]
    at = "unknown threshold" if threshold is None else f"threshold {threshold:g}"
    return (f"foreground ({at}): IoU {pct('iou')}  Dice {pct('dice')}  precision {pct('precision')}  "
            f"recall {pct('recall')}  accuracy {pct('accuracy')}")


def format_sweep(rows: list[dict[str, float | None]], chosen: float | None = None) -> str:
    """The sweep table: threshold, IoU, Dice, precision, recall in %; the row of :func:`best_threshold`
    is marked "best IoU" (none when no IoU is defined) and the ``chosen`` one "(used)"."""
    best = best_threshold([row["threshold"] for row in rows], [row["iou"] for row in rows])
    lines = [f"{'threshold':>9}  {'IoU':>7}  {'Dice':>7}  {'Prec.':>7}  {'Recall':>7}", "-" * 45]
    for row in rows:
        marks = (" best IoU" if row["threshold"] == best else "") + (" (used)" if row["threshold"] == chosen else "")
        lines.append(f"{row['threshold']:>9.2f}  {format_percent(row['iou']):>7}  {format_percent(row['dice']):>7}  "
                     f"{format_percent(row['precision']):>7}  {format_percent(row['recall']):>7}{marks}")
    return "\n".join(lines)
