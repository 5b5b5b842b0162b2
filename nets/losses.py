"""Segmentation losses: cross-entropy, focal and dice, all with an ignore index.

Logits are ``(N, C, h, w)`` and targets ``(N, H, W)`` integer class indices with
``ignore_index`` (255) for void. Logits are resized bilinearly (``align_corners=True``)
to the target size when they differ. A batch whose pixels are all ignored gives a loss
of exactly 0 with a zero gradient instead of NaN. One-hot targets are built here, on
the logits' device, never by the data loader.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("ce", "focal")


def _match_size(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if logits.shape[2:] != target.shape[1:]:
        logits = F.interpolate(logits, size=target.shape[1:], mode="bilinear", align_corners=True)
    return logits


def _zero_loss(logits: torch.Tensor) -> torch.Tensor:
    # Keeps the graph connected so backward() works and yields zero gradients.
    return logits.sum() * 0.0


def ce_loss(logits: torch.Tensor, target: torch.Tensor, cls_weights: torch.Tensor | None = None,
            ignore_index: int = 255) -> torch.Tensor:
    """Cross-entropy: the (class-weighted) mean over non-ignored pixels."""
    logits = _match_size(logits, target)
    target = target.long()
    if not (target != ignore_index).any():
        return _zero_loss(logits)
    weight = None if cls_weights is None else cls_weights.to(logits.device, logits.dtype)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, cls_weights: torch.Tensor | None = None,
               ignore_index: int = 255, alpha: float = 0.5, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss: ``alpha * w[t] * (1 - p_t)**gamma * -log p_t`` summed over valid pixels,
    divided by the sum of ``w[t]`` over them (``w = 1`` without class weights)."""
    logits = _match_size(logits, target)
    target = target.long()
    valid = target != ignore_index
    if not valid.any():
        return _zero_loss(logits)
    nll = F.cross_entropy(logits.float(), target, ignore_index=ignore_index, reduction="none")[valid]
    p_t = torch.exp(-nll)
    if cls_weights is None:
        w = torch.ones_like(nll)
    else:
        w = cls_weights.to(logits.device, torch.float32)[target[valid]]
    return (alpha * w * (1.0 - p_t).pow(gamma) * nll).sum() / w.sum()


def dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255, beta: float = 1.0,
              smooth: float = 1e-5) -> torch.Tensor:
    """Soft F-beta loss, ``1 - mean_c score_c``, over non-ignored pixels of the whole batch."""
    logits = _match_size(logits, target)
    target = target.long()
    valid = target != ignore_index
    if not valid.any():
        return _zero_loss(logits)
    num_classes = logits.shape[1]
    probs = logits.float().softmax(dim=1) * valid.unsqueeze(1)
    one_hot = F.one_hot(target.masked_fill(~valid, 0), num_classes).permute(0, 3, 1, 2)
    one_hot = one_hot.to(probs.dtype) * valid.unsqueeze(1)
    tp = (probs * one_hot).sum(dim=(0, 2, 3))
    fp = probs.sum(dim=(0, 2, 3)) - tp
    fn = one_hot.sum(dim=(0, 2, 3)) - tp
    b2 = beta * beta
    score = ((1 + b2) * tp + smooth) / ((1 + b2) * tp + b2 * fn + fp + smooth)
    return 1.0 - score.mean()


def build_criterion(loss: str = "ce", dice: bool = False, cls_weights: torch.Tensor | None = None,
                    ignore_index: int = 255):
    """Return ``criterion(logits, target)``: CE or focal, plus dice when asked."""
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}")
    main = ce_loss if loss == "ce" else focal_loss

    def criterion(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = main(logits, target, cls_weights=cls_weights, ignore_index=ignore_index)
        if dice:
            value = value + dice_loss(logits, target, ignore_index=ignore_index)
        return value

    return criterion
