"""Lovász losses (Berman et al., CVPR 2018): Lovász-softmax for multi-class logits, Lovász hinge for one channel.

Both are computed over the whole batch (the paper code's ``per_image=False``). Ignored pixels are
sorted after every valid one and their errors are multiplied by 0, so they neither contribute nor
shift the Jaccard gradient of the valid pixels. Class weights do not apply: the loss is already a
per-class IoU surrogate averaged over the classes present. All classes are sorted in one call,
which holds C x N·H·W errors and their int64 order at once (the price of no per-class Python loop).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nets.losses._common import is_binary, one_hot, prepare, safe_div


def _lovasz_jaccard_grad(truth_sorted: torch.Tensor) -> torch.Tensor:
    """Per-row gradient of the Lovász extension of the Jaccard loss at errors sorted in decreasing order."""
    positives = truth_sorted.sum(dim=1, keepdim=True)
    intersection = positives - truth_sorted.cumsum(dim=1)
    union = positives + (1.0 - truth_sorted).cumsum(dim=1)  # >= 1 everywhere: no division by zero
    jaccard = 1.0 - intersection / union
    return torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)


def _lovasz_rows(errors: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Lovász extension per row of ``(K, P)`` errors, with ``valid`` ``(P,)`` marking the pixels that count."""
    key = torch.where(valid.bool(), errors.detach(), torch.full_like(errors, -torch.inf))
    order = key.argsort(dim=1, descending=True)
    errors_sorted = errors.gather(1, order) * valid.expand_as(errors).gather(1, order)
    return (errors_sorted * _lovasz_jaccard_grad(truth.gather(1, order))).sum(dim=1)


def lovasz_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Lovász-softmax (mean over the classes present in the batch's valid pixels) for ``(N, C, H, W)``
    logits, or the Lovász hinge on the raw logit for ``(N, 1, H, W)``; 0 when every pixel is ignored."""
    logits, target, valid = prepare(logits, target, ignore_index)
    valid = valid.reshape(1, -1)
    if is_binary(logits):
        truth = (target == 1).to(logits.dtype).reshape(1, -1) * valid
        errors = F.relu(1.0 - logits.reshape(1, -1) * (2.0 * truth - 1.0))
        return _lovasz_rows(errors, truth, valid)[0]
    num_classes = logits.shape[1]
    probs = logits.softmax(dim=1).transpose(0, 1).reshape(num_classes, -1)
    truth = one_hot(target, num_classes, logits.dtype).transpose(0, 1).reshape(num_classes, -1) * valid
    per_class = _lovasz_rows((truth - probs).abs(), truth, valid)
    present = (truth.sum(dim=1) > 0).to(per_class.dtype)
    return safe_div((per_class * present).sum(), present.sum())
