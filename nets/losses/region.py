"""Region losses built on soft true/false positives: Dice (F-beta), minus log Dice, and Tversky.

Counts are summed over the whole batch, then each class gets a score and the loss reads the mean
of the scores. Multi-class logits score every class from its softmax probability; ``cls_weights``
(one per class) make that mean a weighted one (weighted soft Dice). One-channel logits (a binary
model) score the foreground alone by default, from its sigmoid probability: the usual binary Dice.
With ``cls_weights`` (background, foreground) a binary model scores both classes, background from
``1 - sigmoid``, and takes their weighted mean exactly as a two-class model would: a binary logit
``x`` then gives the loss of the two-class logits ``(0, x)`` with the same weights, and the default
is the weights ``(0, 1)``. Ignored pixels count nowhere, false positives included.

Every loss takes ``(logits, target)`` and then keyword-only options: ``cls_weights``,
``ignore_index``, ``alpha``/``beta``, ``smooth``.
"""

from __future__ import annotations

import torch

from nets.losses._common import is_binary, one_hot, prepare, safe_div


def _soft_counts(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                 both_classes: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft ``(tp, fp, fn)`` per class over the batch, each of shape ``(K,)``.

    K is the channel count for multi-class logits; for one channel it is 1 (the foreground), or 2
    (background, foreground) with ``both_classes``.
    """
    logits, target, valid = prepare(logits, target, ignore_index)
    valid = valid.unsqueeze(1)
    if is_binary(logits):
        probs = torch.sigmoid(logits)
        truth = (target == 1).unsqueeze(1).to(logits.dtype)
        if both_classes:
            # sigmoid(-x) rather than 1 - sigmoid(x): exact where sigmoid(x) rounds to 1, and it is the
            # softmax of (0, x), which keeps the binary and two-class losses equal.
            probs = torch.cat([torch.sigmoid(-logits), probs], dim=1)
            truth = torch.cat([1.0 - truth, truth], dim=1)
    else:
        probs = logits.softmax(dim=1)
        truth = one_hot(target, logits.shape[1], logits.dtype)
    probs, truth = probs * valid, truth * valid
    dims = (0, 2, 3)
    tp = (probs * truth).sum(dims)
    return tp, (probs * (1.0 - truth)).sum(dims), (truth * (1.0 - probs)).sum(dims)


def _tversky_score(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int, alpha: float, beta: float,
                   smooth: float, cls_weights: torch.Tensor | None) -> torch.Tensor:
    """``(tp + smooth) / (tp + alpha fp + beta fn + smooth)`` per class, then their (weighted) mean.

    A class absent from the batch and never predicted scores 1; so does a batch with every pixel
    ignored, which makes every loss here exactly 0 for it.
    """
    if alpha < 0 or beta < 0 or smooth <= 0:
        raise ValueError(f"need alpha >= 0, beta >= 0 and smooth > 0; got alpha={alpha}, beta={beta}, "
                         f"smooth={smooth}")
    tp, fp, fn = _soft_counts(logits, target, ignore_index, both_classes=cls_weights is not None)
    score = (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)
    if cls_weights is None:
        return score.mean()
    weights = torch.as_tensor(cls_weights, device=score.device, dtype=score.dtype)
    if weights.shape != score.shape:
        raise ValueError(f"cls_weights needs {score.numel()} values, one per class (background, foreground for "
                         f"a binary model); got shape {tuple(weights.shape)}")
    return safe_div((weights * score).sum(), weights.sum())


def _dice_score(logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int, beta: float, smooth: float,
                cls_weights: torch.Tensor | None) -> torch.Tensor:
    # ((1+b2) tp + s) / ((1+b2) tp + b2 fn + fp + s) is Tversky with alpha = 1/(1+b2), beta = b2/(1+b2).
    b2 = beta * beta
    return _tversky_score(logits, target, ignore_index=ignore_index, alpha=1.0 / (1.0 + b2), beta=b2 / (1.0 + b2),
                          smooth=smooth / (1.0 + b2), cls_weights=cls_weights)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, *, cls_weights: torch.Tensor | None = None,
              ignore_index: int = 255, beta: float = 1.0, smooth: float = 1e-5) -> torch.Tensor:
    """Soft Dice (F-beta) loss ``1 - score``, the score of a class being
    ``((1 + b2) tp + smooth) / ((1 + b2) tp + b2 fn + fp + smooth)``.

    Multi-class: the mean of every class's score, weighted by ``cls_weights`` when given. One channel:
    the foreground's score; with ``cls_weights`` (background, foreground), the weighted mean of both
    classes' scores, as for the two-class logits ``(0, x)``.
    """
    return 1.0 - _dice_score(logits, target, ignore_index=ignore_index, beta=beta, smooth=smooth,
                             cls_weights=cls_weights)


def logdice_loss(logits: torch.Tensor, target: torch.Tensor, *, cls_weights: torch.Tensor | None = None,
                 ignore_index: int = 255, beta: float = 1.0, smooth: float = 1e-5) -> torch.Tensor:
    """``-log`` of the soft Dice score of :func:`dice_loss` (the class-averaged score, weighted by
    ``cls_weights`` when given in either mode, then the log)."""
    return -torch.log(_dice_score(logits, target, ignore_index=ignore_index, beta=beta, smooth=smooth,
                                  cls_weights=cls_weights))


def tversky_loss(logits: torch.Tensor, target: torch.Tensor, *, cls_weights: torch.Tensor | None = None,
                 ignore_index: int = 255, alpha: float = 0.5, beta: float = 0.5,
                 smooth: float = 1e-5) -> torch.Tensor:
    """Tversky loss ``1 - (tp + smooth) / (tp + alpha fp + beta fn + smooth)``, averaged over classes and
    weighted by ``cls_weights`` like :func:`dice_loss` (one channel: the foreground alone without
    them); ``alpha = beta = 0.5`` is Dice, a larger ``beta`` penalises missed pixels of a class more."""
    return 1.0 - _tversky_score(logits, target, ignore_index=ignore_index, alpha=alpha, beta=beta, smooth=smooth,
                                cls_weights=cls_weights)
