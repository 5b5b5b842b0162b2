"""Loss specs such as ``"bce+dice"`` or ``"ce+0.5*lovasz"``: parsing, and the criterion that sums the terms."""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch

from nets.losses.lovasz import lovasz_loss
from nets.losses.pixelwise import bce_loss, boundary_kernel_size, boundary_weights, ce_loss, focal_loss
from nets.losses.region import dice_loss, logdice_loss, tversky_loss

TERMS = ("ce", "focal", "bce", "dice", "logdice", "lovasz", "tversky")
LOSSES = TERMS  # the name train.py imports for --loss
MODES = ("multiclass", "binary")
# Terms that exist in one mode only, with the term to use in the other.
_WRONG_MODE = {("bce", "multiclass"): "ce", ("ce", "binary"): "bce"}
# Per-pixel terms, the ones --boundary-weight reweights (they take a per-pixel ``weight``).
_PIXEL_TERMS = ("ce", "bce", "focal")
# The pixel-wise term of each mode, suggested when --boundary-weight has none to reweight.
_PIXEL_TERM_OF_MODE = {"multiclass": "ce", "binary": "bce"}


def parse_loss(spec: str) -> list[tuple[float, str]]:
    """Parse ``"focal + 2*dice"`` into ``[(1.0, "focal"), (2.0, "dice")]``; ValueError names the valid terms."""
    hint = f"valid terms: {', '.join(TERMS)}; join terms with '+' and weight one as in ce+0.5*dice"
    terms: list[tuple[float, str]] = []
    for part in spec.split("+"):
        weight_text, star, name = part.rpartition("*")
        name = name.strip().lower()
        if not name:
            raise ValueError(f"empty term in loss {spec!r}; {hint}")
        if name not in TERMS:
            raise ValueError(f"unknown loss term {name!r} in {spec!r}; {hint}")
        weight = 1.0
        if star:
            try:
                weight = float(weight_text)
            except ValueError:
                weight = math.nan
            if not (math.isfinite(weight) and weight > 0):
                raise ValueError(f"bad weight {weight_text.strip()!r} for {name!r} in loss {spec!r}: "
                                 f"use a positive number, as in 0.5*{name}")
        if any(name == seen for _, seen in terms):
            raise ValueError(f"loss term {name!r} appears twice in {spec!r}; give it one weight instead")
        terms.append((weight, name))
    return terms


def _format_spec(terms: list[tuple[float, str]]) -> str:
    """The spec text of parsed terms, e.g. ``"ce+0.5*lovasz"`` (the inverse of :func:`parse_loss`)."""
    return "+".join(name if factor == 1 else f"{factor:g}*{name}" for factor, name in terms)


class Criterion:
    """``criterion(logits, target)``: the weighted sum of the parsed terms, for the given mode."""

    def __init__(self, terms: list[tuple[float, str]], mode: str, fns: dict[str, Callable[..., torch.Tensor]],
                 ignore_index: int, boundary_weight: bool):
        self.terms, self.mode, self.ignore_index = terms, mode, ignore_index
        self.boundary_weight = boundary_weight
        self._fns = fns

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``(N, C, h, w)`` logits against a ``(N, H, W)`` target."""
        binary = logits.shape[1] == 1
        if binary != (self.mode == "binary"):
            raise ValueError(f"{self.mode} loss got logits with {logits.shape[1]} channel(s); a binary model has "
                             "exactly one output channel and a multi-class model at least two")
        weight = None
        if self.boundary_weight:
            kernel = boundary_kernel_size(target.shape[-2])
            weight = boundary_weights(target, kernel, num_classes=2 if binary else logits.shape[1],
                                      ignore_index=self.ignore_index)
        total = torch.zeros((), device=logits.device)
        for factor, name in self.terms:
            extra = {"weight": weight} if name in _PIXEL_TERMS else {}
            total = total + factor * self._fns[name](logits, target, **extra)
        return total

    def __repr__(self) -> str:
        return f"Criterion({_format_spec(self.terms)!r}, mode={self.mode!r}, boundary_weight={self.boundary_weight})"


def check_loss(spec: str = "ce", mode: str = "multiclass", cls_weights: int | None = None,
               boundary_weight: bool = False, tversky_alpha: float = 0.5, tversky_beta: float = 0.5,
               dice: bool = False) -> list[tuple[float, str]]:
    """Every check of :func:`build_criterion` without building anything (``cls_weights`` is the number of class
    weights, if any); returns the parsed terms. train.py checks its flags with this before anything heavy
    happens, and builds the criterion once later, when the class weights are known.

    Raises:
        ValueError: naming the bad term, mode, weight count or option.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    terms = parse_loss(spec)
    if dice and all(name != "dice" for _, name in terms):
        terms.append((1.0, "dice"))
    for _, name in terms:
        if (name, mode) in _WRONG_MODE:
            raise ValueError(f"loss term {name!r} does not exist in {mode} mode; use "
                             f"{_WRONG_MODE[name, mode]!r} instead")
    if mode == "binary" and cls_weights is not None and cls_weights != 2:
        raise ValueError(f"a binary model takes 2 class weights (background, foreground); got {cls_weights}")
    if tversky_alpha < 0 or tversky_beta < 0:
        raise ValueError(f"tversky alpha and beta must be >= 0; got {tversky_alpha} and {tversky_beta}")
    if boundary_weight and all(name not in _PIXEL_TERMS for _, name in terms):
        # Border weights multiply per-pixel losses; a region or Lovász term has no pixels to weight,
        # and accepting the flag there would train without it while the run records it as on.
        text = _format_spec(terms)
        raise ValueError(f"boundary_weight reweights the pixel-wise terms ({', '.join(_PIXEL_TERMS)}); loss "
                         f"{text!r} has none: add one, as in {text}+{_PIXEL_TERM_OF_MODE.get(mode, 'ce')}, "
                         "or drop --boundary-weight")
    return terms


def build_criterion(spec: str = "ce", mode: str = "multiclass", cls_weights: torch.Tensor | None = None,
                    ignore_index: int = 255, boundary_weight: bool = False, tversky_alpha: float = 0.5,
                    tversky_beta: float = 0.5, dice: bool = False) -> Criterion:
    """Return ``criterion(logits, target)`` for a loss ``spec`` (see :func:`parse_loss`).

    ``mode`` is ``multiclass`` (softmax, C >= 2 channels) or ``binary`` (sigmoid, one channel; 2 class
    weights: background, foreground). ``cls_weights`` apply to ce, focal, bce, dice, logdice and tversky
    in both modes, not to lovasz. Binary dice, logdice and tversky score the foreground alone without
    class weights and the weighted mean of the background and foreground scores with them (see
    :mod:`nets.losses.region`). ``boundary_weight`` weights the pixel-wise terms (ce, bce, focal) by
    :func:`boundary_weights` with a window from :func:`boundary_kernel_size` of the target's height;
    a spec without any of them raises ValueError. ``dice=True`` adds a ``dice`` term (the older
    ``--loss focal --dice``).
    """
    terms = check_loss(spec, mode, cls_weights=None if cls_weights is None else len(cls_weights),
                       boundary_weight=boundary_weight, tversky_alpha=tversky_alpha, tversky_beta=tversky_beta,
                       dice=dice)
    common = {"cls_weights": cls_weights, "ignore_index": ignore_index}
    fns = {
        "ce": partial(ce_loss, **common), "bce": partial(bce_loss, **common),
        "focal": partial(focal_loss, **common), "dice": partial(dice_loss, **common),
        "logdice": partial(logdice_loss, **common),
        "tversky": partial(tversky_loss, alpha=tversky_alpha, beta=tversky_beta, **common),
        "lovasz": partial(lovasz_loss, ignore_index=ignore_index),
    }
    return Criterion(terms, mode, fns, ignore_index, boundary_weight)
