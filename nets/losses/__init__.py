"""Segmentation losses, all honouring an ignore index (255) and safe on a batch with every pixel ignored.

Logits are ``(N, C, h, w)`` and targets ``(N, H, W)`` integer class indices with ``ignore_index``
for void; C == 1 is a binary model read through a sigmoid (target in {0, 1, 255}). Logits are
promoted to float32 (even under autocast) and resized bilinearly (``align_corners=True``) to the
target size when they differ. No loss reads a value on the host: ignored pixels are masked by
multiplication and empty denominators are replaced on the device, so a batch whose pixels are all
ignored gives exactly 0 with zero gradients, and a training step adds no synchronisation.

Every loss is called ``fn(logits, target, *, ...)``: its options are keyword-only and named alike
everywhere (``cls_weights``, ``ignore_index``, ``weight`` for per-pixel weights, ``alpha``, ``beta``,
``gamma``, ``smooth``), so an option can never land in another's place. ``cls_weights`` apply to
every term but Lovász, in both modes (a binary model's two classes are background and foreground).

Modules: ``pixelwise`` (ce, bce, focal, border weights), ``region`` (dice, logdice, tversky),
``lovasz`` (Lovász-softmax / hinge) and ``compose`` (``"bce+dice"`` specs and the criterion).
"""

from nets.losses.compose import LOSSES, MODES, TERMS, Criterion, build_criterion, check_loss, parse_loss
from nets.losses.lovasz import lovasz_loss
from nets.losses.pixelwise import bce_loss, boundary_kernel_size, boundary_weights, ce_loss, focal_loss
from nets.losses.region import dice_loss, logdice_loss, tversky_loss

__all__ = [
    "LOSSES",
    "MODES",
    "TERMS",
    "Criterion",
    "bce_loss",
    "boundary_kernel_size",
    "boundary_weights",
    "build_criterion",
    "ce_loss",
    "check_loss",
    "dice_loss",
    "focal_loss",
    "logdice_loss",
    "lovasz_loss",
    "parse_loss",
    "tversky_loss",
]
