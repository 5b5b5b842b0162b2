"""Helpers shared by every loss: input preparation, masks, one-hot targets and safe division.

Nothing here reads a tensor's values on the host: validity is a mask that multiplies, and
a denominator that may be zero is replaced on the device, so losses never synchronise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def prepare(logits: torch.Tensor, target: torch.Tensor,
            ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(logits, target, valid)`` ready for a loss.

    ``logits`` is promoted to at least float32 (float64 stays, so gradcheck works) and resized
    bilinearly (``align_corners=True``) to the target's size; ``target`` is a long tensor whose
    ignored pixels are replaced by class 0 so that it can index anything; ``valid`` is a float
    ``(N, H, W)`` mask, 1 where the pixel counts.
    """
    if logits.dim() != 4 or target.dim() != 3:
        raise ValueError(f"expected logits (N, C, h, w) and target (N, H, W); got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    # Casting before resizing keeps the interpolation itself in float32 under autocast.
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if logits.shape[2:] != target.shape[1:]:
        logits = F.interpolate(logits, size=target.shape[1:], mode="bilinear", align_corners=True)
    target = target.long()
    valid = target != ignore_index
    return logits, target.masked_fill(~valid, 0), valid.to(logits.dtype)


def safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where a zero ``den`` is replaced by 1; with ``num`` 0 there the result is exactly 0."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def one_hot(target: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``(N, H, W)`` class indices to a ``(N, C, H, W)`` indicator; values outside ``[0, C)`` give all zeros.

    A comparison instead of ``F.one_hot``, which checks the value range on the host on some devices.
    """
    classes = torch.arange(num_classes, device=target.device).view(1, num_classes, 1, 1)
    return (target.unsqueeze(1) == classes).to(dtype)


def class_weights_per_pixel(cls_weights: torch.Tensor | None, target: torch.Tensor, valid: torch.Tensor,
                            expected: int) -> torch.Tensor:
    """``valid * cls_weights[target]``: each valid pixel weighted by its class (1 without class weights)."""
    if cls_weights is None:
        return valid
    cls_weights = torch.as_tensor(cls_weights, device=valid.device, dtype=valid.dtype)
    if cls_weights.shape != (expected,):
        raise ValueError(f"cls_weights needs {expected} values, one per class (background, foreground for a "
                         f"binary model); got shape {tuple(cls_weights.shape)}")
    return valid * cls_weights[target]


def is_binary(logits: torch.Tensor) -> bool:
    """One output channel means a binary model read through a sigmoid (a shape, not a value: no sync)."""
    return logits.shape[1] == 1
