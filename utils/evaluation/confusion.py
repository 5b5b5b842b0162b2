"""The streaming confusion matrix and the counting of (ground truth, prediction) pairs.

Rows are ground truth and columns predictions, counted over the pixels whose ground truth lies
in ``[0, num_classes)``; everything else (255 = ignore) is left out. A prediction outside the
classes raises instead of being folded into another cell. Counting runs on the matrix's
device (numpy's bincount on the CPU, torch's elsewhere) and sums over ranks under torchrun.
"""

from __future__ import annotations

import numpy as np
import torch

from utils.evaluation.scores import Scores, as_numpy, compute_scores


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
            counts = torch.from_numpy(_count_pairs(as_numpy(pred), as_numpy(target), c))
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
