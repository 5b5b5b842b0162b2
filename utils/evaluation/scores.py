"""Scores of a confusion matrix: per-class IoU, recall, precision, F1 and the overall figures.

A per-class ratio whose denominator is 0 is *undefined* (NaN), not 0: a class that appears
neither in the ground truth nor in the prediction says nothing about the model, so it is left
out of the means, printed as "n/a" and written as JSON ``null``. (The original tutorial scored
such classes as 0, which drags mIoU down on every dataset with absent classes.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    """A tensor (any device) or array-like as a host numpy array."""
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


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


def nanmean(values: np.ndarray) -> float:
    """Mean of the defined entries; NaN (without numpy's warning) when none is defined."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def compute_scores(matrix: np.ndarray | torch.Tensor) -> Scores:
    """IoU, recall (= per-class pixel accuracy), precision, F1 and the overall scores of a matrix."""
    hist = as_numpy(matrix).astype(np.float64)
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
        miou=nanmean(iou),
        mpa=nanmean(recall),
        accuracy=accuracy,
        fwiou=fwiou,
        gt_pixels=gt_pixels.astype(np.int64),
        pred_pixels=pred_pixels.astype(np.int64),
    )
