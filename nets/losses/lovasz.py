"""Lovász losses (Berman et al., CVPR 2018): Lovász-softmax for multi-class logits, Lovász hinge for one channel.

Both are computed over the whole batch (the paper code's ``per_image=False``). Ignored pixels are
sorted after every valid one and their errors are multiplied by 0, so they neither contribute nor
shift the Jaccard gradient of the valid pixels. Class weights do not apply: the loss is already a
per-class IoU surrogate averaged over the classes present. Classes are sorted a group at a time,
so the sort's work arrays (errors, their int64 order, the sorted copies) hold at most about
``SORT_ELEMENTS`` values whatever the batch and class count; the groups are a short Python loop
over slices of classes and never read values on the host. Like every loss here, ``lovasz_loss``
takes ``(logits, target)`` and then keyword-only options (``ignore_index`` alone: no
``cls_weights``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nets.losses._common import is_binary, prepare, safe_div

SORT_ELEMENTS = 1 << 23  # errors sorted in one call (with their int64 order: about 100 MB of work arrays)


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


def lovasz_loss(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = 255) -> torch.Tensor:
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
    labels = target.reshape(1, -1)
    group = max(1, SORT_ELEMENTS // max(probs.shape[1], 1))
    per_class, present = [], []
    for first in range(0, num_classes, group):
        classes = torch.arange(first, min(first + group, num_classes), device=labels.device).unsqueeze(1)
        truth = (labels == classes).to(probs.dtype) * valid
        per_class.append(_lovasz_rows((truth - probs[first:first + group]).abs(), truth, valid))
        present.append((truth.sum(dim=1) > 0).to(probs.dtype))
    per_class, present = torch.cat(per_class), torch.cat(present)
    return safe_div((per_class * present).sum(), present.sum())
