"""Per-pixel losses (cross-entropy, binary cross-entropy, focal) and the border weights of the survey.

Each loss is a weighted mean over the non-ignored pixels: a pixel's weight is its class weight
times an optional per-pixel ``weight`` (e.g. :func:`boundary_weights`), and the weighted sum is
divided by the sum of the weights. C == 1 logits are a binary model read through a sigmoid, whose
two classes are background (0) and foreground (1). Every loss takes ``(logits, target)`` and then
keyword-only options, named alike in every module: ``cls_weights``, ``ignore_index``, ``weight``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nets.losses._common import class_weights_per_pixel, is_binary, one_hot, prepare, safe_div


def _pixel_nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``-log p(true class)`` per pixel, ``(N, H, W)``: sigmoid for one channel, softmax otherwise."""
    if is_binary(logits):
        return F.binary_cross_entropy_with_logits(logits[:, 0], (target == 1).to(logits.dtype), reduction="none")
    return F.cross_entropy(logits, target, reduction="none")


def _pixel_weights(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, cls_weights: torch.Tensor | None,
                   weight: torch.Tensor | None) -> torch.Tensor:
    """``valid * cls_weights[target] * weight``, ``(N, H, W)``: what each pixel counts for in the mean."""
    w = class_weights_per_pixel(cls_weights, target, valid, max(logits.shape[1], 2))
    if weight is None:
        return w
    if weight.shape != target.shape:
        # Broadcasting would silently accept e.g. an (H, W) map for a whole batch of another size.
        raise ValueError(f"weight must have the target's shape {tuple(target.shape)} (one value per pixel); "
                         f"got {tuple(weight.shape)}")
    return w * weight.to(w)


def ce_loss(logits: torch.Tensor, target: torch.Tensor, *, cls_weights: torch.Tensor | None = None,
            ignore_index: int = 255, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-class cross-entropy: the mean over non-ignored pixels, weighted by ``cls_weights[target]``
    and by the per-pixel ``weight`` ``(N, H, W)`` when given (sum of ``w * loss`` over sum of ``w``)."""
    if is_binary(logits):
        raise ValueError("ce_loss needs logits with at least 2 channels; use bce_loss for a one-channel (binary) model")
    logits, target, valid = prepare(logits, target, ignore_index)
    w = _pixel_weights(logits, target, valid, cls_weights, weight)
    return safe_div((w * _pixel_nll(logits, target)).sum(), w.sum())


def bce_loss(logits: torch.Tensor, target: torch.Tensor, *, cls_weights: torch.Tensor | None = None,
             ignore_index: int = 255, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross-entropy of ``(N, 1, H, W)`` logits against a ``(N, H, W)`` target in {0, 1, ignore_index}:
    the mean over non-ignored pixels, weighted like :func:`ce_loss` (``cls_weights`` = background, foreground)."""
    if not is_binary(logits):
        raise ValueError(f"bce_loss needs one-channel logits (N, 1, H, W); got {logits.shape[1]} channels, "
                         "use ce_loss for a multi-class model")
    logits, target, valid = prepare(logits, target, ignore_index)
    w = _pixel_weights(logits, target, valid, cls_weights, weight)
    return safe_div((w * _pixel_nll(logits, target)).sum(), w.sum())


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, cls_weights: torch.Tensor | None = None,
               ignore_index: int = 255, weight: torch.Tensor | None = None, alpha: float = 0.5,
               gamma: float = 2.0) -> torch.Tensor:
    """Focal loss ``alpha * w * (1 - p_t)**gamma * -log p_t`` summed over valid pixels and divided by the
    sum of ``w``, where ``w = cls_weights[t] * weight`` (each factor 1 when not given; ``weight`` is a
    per-pixel ``(N, H, W)`` map such as :func:`boundary_weights`).

    ``p_t`` is the softmax probability of the true class, or for one channel the sigmoid probability of
    the true side. ``alpha`` is a constant factor in both cases (class balance is what ``cls_weights``
    is for), so a binary logit ``x`` gives the same loss as the two-class logits ``(0, x)``.
    """
    logits, target, valid = prepare(logits, target, ignore_index)
    w = _pixel_weights(logits, target, valid, cls_weights, weight)
    nll = _pixel_nll(logits, target)
    modulation = (1.0 - torch.exp(-nll)).pow(gamma)
    return safe_div((alpha * w * modulation * nll).sum(), w.sum())


def boundary_weights(mask: torch.Tensor, kernel_size: int, *, num_classes: int = 2,
                     ignore_index: int = 255) -> torch.Tensor:
    """Survey border weights ``w = 1 + 2 * [0.01 <= avgpool_k(mask) <= 0.99]`` for a ``(N, H, W)`` mask.

    A pixel is a border pixel when the local fraction of any class in the ``k x k`` window around it
    lies in [0.01, 0.99]; for a {0, 1} mask this is the foreground fraction. Ignored pixels are left out
    of the fractions (count of the class over count of valid pixels in the window, 'same' padding,
    stride 1), so the image edge and void regions do not create borders. ``num_classes`` must cover
    the mask's class values (2 for binary masks). Returns float32 weights 1 or 3, not normalised;
    ignored pixels get a weight too, which the losses then drop.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd integer; got {kernel_size}")
    valid = mask != ignore_index
    counts = one_hot(mask.long().masked_fill(~valid, 0), num_classes, torch.float32)
    counts = torch.cat([counts * valid.unsqueeze(1), valid.unsqueeze(1).float()], dim=1)
    # Separable box sums (exact small integers in float32): O(k) per pixel instead of O(k^2).
    pad = kernel_size // 2
    counts = F.avg_pool2d(counts, (kernel_size, 1), stride=1, padding=(pad, 0), divisor_override=1)
    counts = F.avg_pool2d(counts, (1, kernel_size), stride=1, padding=(0, pad), divisor_override=1)
    per_class, total = counts[:, :-1], counts[:, -1:]
    # fraction in [0.01, 0.99] written on the integer counts, so that no rounding decides a tie.
    border = (100 * per_class >= total) & (100 * per_class <= 99 * total) & (total > 0)
    return 1.0 + 2.0 * border.any(dim=1).float()


def boundary_kernel_size(height: int) -> int:
    """Odd window for :func:`boundary_weights` at an input ``height``, following the survey
    (11 at 128, 21 at 256 and 512, 41 at 1024).

    Rule: with ``o`` the number of octaves from 128 to the height's nearest power of two (in log
    scale), ``k = 2 * round(5 * 2 ** floor((o + 1) / 2)) + 1``, at least 3: the window doubles every
    second doubling of the height (2048 -> 41, 4096 -> 81; 64 -> 11, 32 -> 5, 8 -> 3).
    """
    if height < 1:
        raise ValueError(f"height must be a positive number of pixels; got {height}")
    octaves = round(math.log2(height / 128))
    return 2 * max(1, round(5 * 2.0 ** ((octaves + 1) // 2))) + 1
