"""The optimizer of a run and the loss's class weights (``--class-weights``).

SGD with Nesterov momentum, Adam or AdamW as in the original recipe; class weights are given
by hand or by median-frequency balancing over the training labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from utils.data.dataset import SegmentationDataset
from utils.errors import UserError

OPTIMIZERS = ("sgd", "adam", "adamw")


def build_optimizer(name: str, params: Sequence[torch.nn.Parameter], lr: float, momentum: float,
                    weight_decay: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, Adam (L2 in the gradient) or AdamW (decoupled weight decay)."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(momentum, 0.999), weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def median_frequency_weights(dataset: SegmentationDataset, num_classes: int) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus): ``w_c = median(f) / f_c`` over the training labels.

    ``f_c`` is the pixel count of class c divided by the pixel count of the images where c
    occurs (ignore pixels excluded). Classes that never occur get weight 1.
    """
    class_pixels = np.zeros(num_classes, np.int64)
    image_pixels = np.zeros(num_classes, np.int64)
    for index in range(len(dataset)):
        label = dataset.read_label(index)
        counts = np.bincount(label.ravel(), minlength=256)[:num_classes].astype(np.int64)
        valid = int(counts.sum())
        class_pixels += counts
        image_pixels[counts > 0] += valid
    present = class_pixels > 0
    weights = np.ones(num_classes, np.float64)
    if present.any():
        freq = class_pixels[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    return torch.tensor(weights, dtype=torch.float32)


def parse_class_weights(text: str | None, num_classes: int, dataset: SegmentationDataset) -> torch.Tensor | None:
    """``--class-weights``: None, ``auto`` (median frequency) or a comma list with one weight per class."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return median_frequency_weights(dataset, num_classes)
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--class-weights {text!r}: give 'auto' or comma-separated numbers, e.g. 1,2,2") from None
    if len(values) != num_classes:
        raise UserError(f"--class-weights has {len(values)} values but there are {num_classes} classes; "
                        "give one weight per class (background first)")
    if any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"--class-weights {text!r}: weights must be finite and not negative")
    return torch.tensor(values, dtype=torch.float32)
