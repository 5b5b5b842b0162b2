"""Typed options of inference: how to run a model, how to tile large images, what to write.

Library code (the predictor, sliding windows, outputs, video, the ``--fps`` benchmark) takes these
objects, never parsed command lines: predict.py and get_miou.py map their flags to them in one
place (:mod:`utils.inference.cli`), and a notebook or a server builds them directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils.inference.visualize import MIX_MODES

MODES = ("auto", "whole", "slide")


@dataclass(frozen=True)
class SlideOptions:
    """How sliding windows tile an image: window overlap, resize factor, progress bar over windows."""

    overlap: float = 0.33
    scale: float = 1.0
    progress: bool = True

    def __post_init__(self) -> None:
        if not (math.isfinite(self.overlap) and 0 <= self.overlap < 1):
            raise ValueError(f"overlap {self.overlap}: must lie in [0, 1), e.g. 0.33 (a third of a window shared)")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale {self.scale}: must be a positive factor, e.g. 1.0 (native resolution) or 0.5")


@dataclass(frozen=True)
class InferenceOptions:
    """How a :class:`~utils.inference.predictor.Predictor` runs.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``.
        precision: see :func:`utils.device.resolve_precision` (``fastest``, ``auto``, ``fp32`` ...).
        batch_size: images (or windows) per forward pass.
        threads: ONNX Runtime intra-op threads (None: all cores).
        optimize: run a copy of the model with BatchNorm folded into the convolutions.
        channels_last: NHWC layout (None: on).
        mode: ``whole`` (letterbox the image to the input size), ``slide`` (windows of the input size at
            native resolution) or ``auto`` (``slide`` for models trained on crops, else ``whole``).
        slide: the sliding-window settings.
        tta: test-time augmentation (``whole`` mode only): probabilities averaged over ``tta_scales`` of
            the input size and, with ``flip``, horizontal flips.
        threshold: a binary model's decision threshold (None: the one its spec holds).
    """

    device: str | torch.device = "auto"
    precision: str = "auto"
    batch_size: int = 4
    threads: int | None = None
    optimize: bool = True
    channels_last: bool | None = None
    mode: str = "auto"
    slide: SlideOptions = field(default_factory=SlideOptions)
    tta: bool = False
    tta_scales: tuple[float, ...] = (0.75, 1.0, 1.25)
    flip: bool = True
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {self.batch_size}")
        if self.tta and not self.tta_scales:
            raise ValueError("tta needs at least one scale")
        if self.threshold is not None and not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold {self.threshold}: must lie in [0, 1]")


@dataclass(frozen=True)
class OutputOptions:
    """What predict.py writes for each image.

    Args:
        out_dir: output folder (inputs' relative paths are kept below it).
        mix: ``blend`` (colours over the image), ``mask`` (colours only) or ``cutout`` (objects on black).
        alpha: weight of the colours in ``blend``.
        save_mask: also write the class-index PNG ``<name>_mask.png``.
        save_prob: also write ``<name>_prob.png`` (foreground or chosen-class probability).
        prob_bits: 8- or 16-bit probability PNGs.
        count: collect per-class pixel counts.
    """

    out_dir: Path = Path("img_out")
    mix: str = "blend"
    alpha: float = 0.7
    save_mask: bool = False
    save_prob: bool = False
    prob_bits: int = 8
    count: bool = False

    def __post_init__(self) -> None:
        if self.mix not in MIX_MODES:
            raise ValueError(f"mix must be one of {', '.join(MIX_MODES)}; got {self.mix!r}")
        if self.prob_bits not in (8, 16):
            raise ValueError(f"prob_bits must be 8 or 16; got {self.prob_bits}")
        object.__setattr__(self, "out_dir", Path(self.out_dir))


@dataclass(frozen=True)
class VideoOptions:
    """predict.py's video mode: ``source`` is a file or a camera index (``"0"``); write to ``save``
    (default ``<out_dir>/<stem>.mp4`` for files) and/or ``show`` a window."""

    source: str
    save: str | None = None
    show: bool = False
