"""Region losses built on soft true/false positives: Dice (F-beta), minus log Dice, and Tversky.

Counts are summed over the whole batch. Multi-class logits use the softmax probability of every
class and average the per-class scores (a weighted mean with ``cls_weights``: weighted soft Dice);
one-channel logits use the sigmoid foreground probability alone, so class weights do not apply
there. Ignored pixels count nowhere, false positives included.
"""

from __future__ import annotations

import torch

from nets.losses._common import is_binary, one_hot, prepare, safe_div


def _soft_counts(logits: torch.Tensor, target: torch.Tensor,
                 ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft ``(tp, fp, fn)`` per class over the batch, each of shape ``(K,)`` (K = 1 for binary)."""
    logits, target, valid = prepare(logits, target, ignore_index)
    valid = valid.unsqueeze(1)
    if is_binary(logits):
        probs = torch.sigmoid(logits)
        truth = (target == 1).unsqueeze(1).to(logits.dtype)
    else:
        probs = logits.softmax(dim=1)
        truth = one_hot(target, logits.shape[1], logits.dtype)
    probs, truth = probs * valid, truth * valid
    dims = (0, 2, 3)
    tp = (probs * truth).sum(dims)
    return tp, (probs * (1.0 - truth)).sum(dims), (truth * (1.0 - probs)).sum(dims)


def _tversky_score(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, alpha: float, beta: float,
                   smooth: float, cls_weights: torch.Tensor | None) -> torch.Tensor:
    """``(tp + smooth) / (tp + alpha fp + beta fn + smooth)`` per class, then their (weighted) mean.

    A class absent from the batch and never predicted scores 1; so does a batch with every pixel
    ignored, which makes every loss here exactly 0 for it.
    """
    if alpha < 0 or beta < 0 or smooth <= 0:
        raise ValueError(f"need alpha >= 0, beta >= 0 and smooth > 0; got alpha={alpha}, beta={beta}, "
                         f"smooth={smooth}")
    tp, fp, fn = _soft_counts(logits, target, ignore_index)
    score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    if cls_weights is None or is_binary(logits):
        return score.mean()
    weights = torch.as_tensor(cls_weights, device=score.device, dtype=score.dtype)
    if weights.shape != score.shape:
        raise ValueError(f"cls_weights needs {score.numel()} values, one per class; got shape {tuple(weights.shape)}")
    return safe_div((weights * score).sum(), weights.sum())


def _dice_score(logits: torch.Tensor, target: torch.Tensor, ignore_index: int, beta: float, smooth: float,
                cls_weights: torch.Tensor | None) -> torch.Tensor:
    # ((1+b2) tp + s) / ((1+b2) tp + b2 fn + fp + s) is Tversky with alpha = 1/(1+b2), beta = b2/(1+b2).
    b2 = beta * beta
    return _tversky_score(logits, target, ignore_index, 1.0 / (1.0 + b2), b2 / (1.0 + b2), smooth / (1.0 + b2),
                          cls_weights)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, beta: float = 1.0,
              smooth: float = 1e-5, *, cls_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Soft Dice (F-beta) loss ``1 - score``, the score being
    ``((1 + b2) tp + smooth) / ((1 + b2) tp + b2 fn + fp + smooth)`` averaged over classes (weighted by
    ``cls_weights`` when given); for one channel, the Dice of the foreground probability."""
    return 1.0 - _dice_score(logits, target, ignore_index, beta, smooth, cls_weights)


def logdice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, beta: float = 1.0,
                 smooth: float = 1e-5, *, cls_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``-log`` of the soft Dice score of :func:`dice_loss` (the class-averaged score, then the log)."""
    return -torch.log(_dice_score(logits, target, ignore_index, beta, smooth, cls_weights))


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, alpha: float = 0.5,
                 beta: float = 0.5, smooth: float = 1e-5, *,
                 cls_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Tversky loss ``1 - (tp + smooth) / (tp + alpha fp + beta fn + smooth)``, averaged over classes like
    :func:`dice_loss`; ``alpha = beta = 0.5`` is Dice, a larger ``beta`` penalises missed foreground more."""
    return 1.0 - _tversky_score(logits, target, ignore_index, alpha, beta, smooth, cls_weights)
