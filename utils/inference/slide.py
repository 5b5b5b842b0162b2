"""Sliding-window inference at native resolution (``--slide``); windows laid out as in mmsegmentation's ``slide`` mode.

Windows of the network's input size (h, w) tile the image (resized by ``scale`` first):
the stride is ``round(size * (1 - overlap))``, ``n = max(H - h + stride - 1, 0) // stride + 1``
windows per axis, the last one moved back to touch the border. An image smaller than a window
is padded bottom and right with the engine's fill (grey, or the mean) and cropped back. The class probabilities
(softmax; sigmoid for a one-channel binary model) of overlapping windows are averaged with
equal weight, then argmax (or the threshold). mmsegmentation averages the logits instead; the labels
can differ where three or more windows overlap, or with more than two classes.

Memory is bounded by the output, not by classes x pixels: windows run row of windows by row of
windows into an accumulator one window high, and the rows no later window covers are finished
(averaged, resized back when ``scale != 1``, turned into labels) as soon as the next row of
windows starts. With ``with_prob``, :func:`slide_predict` also keeps the per-pixel probability
(foreground for a binary model, else the chosen class's) of each finished band: one (H, W) map,
never all classes at full size. The forward pass is the shared
:class:`~utils.inference.engine.Engine`, so PyTorch and ONNX Runtime behave alike.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from utils.data.normalize import SUPPORTED_DTYPES
from utils.data.transforms import _shrink_or_cubic, resize
from utils.errors import UserError
from utils.inference.engine import Engine
from utils.inference.options import SlideOptions
from utils.inference.postprocess import bilinear_taps, labels_and_prob

# Below this many windows a progress bar is only noise (e.g. evaluating a split of small images).
_PROGRESS_MIN_WINDOWS = 16


def check_slide_options(overlap: float, scale: float, input_size: tuple[int, int]) -> None:
    """UserError naming the flag when ``--overlap`` or ``--scale`` cannot tile an image with this window."""
    if not (math.isfinite(overlap) and 0 <= overlap < 1):
        raise UserError(f"--overlap {overlap}: must lie in [0, 1), e.g. 0.33 (a third of a window shared)")
    if min(strides(input_size, overlap)) < 1:
        raise UserError(f"--overlap {overlap} leaves a stride of 0 pixels for a {input_size[0]}x{input_size[1]} "
                        "window: lower it")
    if not (math.isfinite(scale) and scale > 0):
        raise UserError(f"--scale {scale}: must be a positive factor, e.g. 1.0 (native resolution) or 0.5")


def strides(window: tuple[int, int], overlap: float) -> tuple[int, int]:
    """Stride per axis: ``round(size * (1 - overlap))``."""
    return round(window[0] * (1 - overlap)), round(window[1] * (1 - overlap))


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """First pixel of each window along an axis of ``length`` pixels (at least ``window``), mmsegmentation's way."""
    count = max(length - window + stride - 1, 0) // stride + 1
    return [max(min(i * stride, length - window), 0) for i in range(count)]


def _coverage(length: int, window: int, starts: list[int], device: torch.device) -> torch.Tensor:
    """How many windows cover each pixel of an axis (float32, shape (length,))."""
    counts = torch.zeros(length, dtype=torch.float32, device=device)
    for start in starts:
        counts[start:start + window] += 1
    return counts


def slide_rows(engine: Engine, image: np.ndarray, overlap: float = 0.33, progress: bool = True,
               starts: tuple[list[int], list[int]] | None = None,
               skip: Callable[[int, int], bool] | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """Averaged window probabilities of ``image`` as row bands ``(first_row, (C, rows, W) float32)``.

    The bands follow each other top to bottom and cover the image's rows exactly once; each is
    yielded as soon as no later window covers it. C is the network's output channels (1 for a
    binary model, whose band holds the sigmoid). ``starts`` (sorted rows, sorted columns) replaces
    the layout of :func:`window_starts`: :mod:`utils.geo.scene` runs, on a strip of a scene, exactly
    the scene's windows that touch the strip, and every pixel must be covered. ``image`` only needs
    ``shape``, ``dtype`` and ``image[rows, cols]`` for each window, asked in layout order (a strip
    read a row of windows at a time), unless it is smaller than a window.

    ``skip(y, x)`` true leaves the window at (y, x) out of the forward pass and out of the sums:
    :mod:`utils.geo.scene` skips windows with no valid pixel, whose every pixel is nodata anyway.
    Pixels that only skipped windows cover come out as zeros; a band then needs ``engine.channels``.
    """
    height, width = image.shape[:2]
    win_h, win_w = engine.input_size
    stride_h, stride_w = strides((win_h, win_w), overlap)
    pad_h, pad_w = max(height, win_h), max(width, win_w)
    if (pad_h, pad_w) != (height, width):
        canvas = np.full((pad_h, pad_w, image.shape[2]), engine.fill(image), dtype=image.dtype)
        canvas[:height, :width] = image
        image = canvas
    ys, xs = starts or (window_starts(pad_h, win_h, stride_h), window_starts(pad_w, win_w, stride_w))
    device = engine.device
    row_cover = _coverage(pad_h, win_h, ys, device)
    col_cover = _coverage(pad_w, win_w, xs, device)
    windows = [(y, x) for y in ys for x in xs]

    acc: torch.Tensor | None = None  # sums for rows base .. base + win_h of the padded image
    if engine.channels is not None:
        acc = torch.zeros((engine.channels, win_h, pad_w), dtype=torch.float32, device=device)
    base = 0

    def finish(stop: int) -> Iterator[tuple[int, torch.Tensor]]:
        """Average rows base..stop, yield the part inside the image, and move the accumulator down."""
        nonlocal base
        while base < stop:  # more than a window's rows when a whole row of windows was skipped
            count = min(stop - base, win_h)
            if acc is None:
                raise ValueError("every window so far was skipped and the engine does not know its channels")
            band = acc[:, :count, :width] / (row_cover[base:base + count, None] * col_cover[None, :width])
            if base < height:
                yield base, band[:, :height - base]
            # Move the rows later windows still add to up, in place: no second accumulator.
            kept = acc[:, count:].clone()
            acc[:, :win_h - count] = kept
            acc[:, win_h - count:] = 0
            base += count

    def batches() -> Iterator[list[tuple[int, int, torch.Tensor | None]]]:
        """The windows in layout order, in groups that each hold ``batch_size`` run windows (skipped: None)."""
        group: list[tuple[int, int]] = []
        runs: list[tuple[int, int]] = []
        canvases: list[np.ndarray] = []
        for index, (y, x) in enumerate(windows):
            group.append((y, x))
            if skip is None or not skip(y, x):
                runs.append((y, x))
                # Taken now, in layout order: a strip holds one row of windows at a time.
                canvases.append(image[y:y + win_h, x:x + win_w])
            if len(runs) == engine.batch_size or index == len(windows) - 1:
                probs: dict[tuple[int, int], torch.Tensor] = {}
                if runs:
                    outputs = engine.forward(engine.to_batch(canvases))
                    probs = dict(zip(runs, engine.probabilities(outputs.float()), strict=True))
                yield [(y0, x0, probs.get((y0, x0))) for y0, x0 in group]
                group, runs, canvases = [], [], []

    bar = tqdm(total=len(windows), unit="window", leave=False, file=sys.stderr,
               disable=not progress or len(windows) < _PROGRESS_MIN_WINDOWS)
    for group in batches():
        for y, x, prob in group:
            if y != base:
                yield from finish(y)
            if prob is not None:
                if acc is None:
                    acc = torch.zeros((prob.shape[0], win_h, pad_w), dtype=torch.float32, device=device)
                acc[:, :, x:x + win_w] += prob
        bar.update(len(group))
    bar.close()
    yield from finish(pad_h)


def resize_rows(bands: Iterator[tuple[int, torch.Tensor]], src_height: int,
                size: tuple[int, int]) -> Iterator[tuple[int, torch.Tensor]]:
    """Bilinearly resize a stream of row bands (C, rows, w) of a ``src_height``-row map to ``size`` = (H, W).

    Yields bands of the resized map top to bottom, each as soon as the source rows it interpolates
    have arrived; the result equals ``F.interpolate(whole, size, mode="bilinear")`` band by band.
    """
    height, width = size
    taps = bilinear_taps(src_height, height)  # the coordinates of F.interpolate, computed once
    held: torch.Tensor | None = None  # source rows held_start .. held_start + len
    held_start = 0
    next_row = 0
    for start, band in bands:
        if held is None:
            lower_all, upper_all = (torch.from_numpy(t).to(band.device) for t in (taps.first, taps.second))
            weight_all = torch.from_numpy(taps.frac).to(band.device)
        held = band if held is None else torch.cat((held, band), 1)
        available = start + band.shape[1]
        if available == src_height:
            ready = height - next_row
        else:  # the taps never decrease: ready are the rows whose second tap has arrived
            ready = int(np.searchsorted(taps.second, available)) - next_row
        if ready > 0:
            rows = slice(next_row, next_row + ready)
            lower, upper = lower_all[rows] - held_start, upper_all[rows] - held_start
            weight = weight_all[rows]
            mixed = held[:, lower] * (1 - weight)[None, :, None] + held[:, upper] * weight[None, :, None]
            # Same row count in and out: the bilinear pass only interpolates along x.
            yield next_row, F.interpolate(mixed[None], size=(ready, width), mode="bilinear",
                                          align_corners=False)[0]
            next_row += ready
            if next_row < height:
                keep_from = int(taps.first[next_row])
                held = held[:, keep_from - held_start:]
                held_start = keep_from


def slide_predict(engine: Engine, image: np.ndarray, options: SlideOptions,
                  with_prob: bool = False) -> np.ndarray | tuple[np.ndarray, torch.Tensor]:
    """Labels (H, W) uint8 of an (H, W, C) image by sliding windows (see the module docstring).

    With ``options.scale != 1`` the image is resized first and the averaged probabilities are
    resized back bilinearly, band by band, before the argmax / threshold. With ``with_prob`` the
    result is ``(labels, prob)``: ``prob`` (H, W) float32 on the engine's device is the foreground
    probability (binary) or the chosen class's probability, as
    :func:`~utils.inference.postprocess.labels_and_prob` gives them.
    """
    dtypes = SUPPORTED_DTYPES if engine.normalization.scaled else ("uint8",)
    if image.ndim != 3 or image.dtype.name not in dtypes:
        raise ValueError(f"slide_predict expects an (H, W, C) array of {' or '.join(dtypes)} (uint8 unless the "
                         f"model has per-band statistics), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    scaled = image
    if options.scale != 1:
        size = (max(1, round(width * options.scale)), max(1, round(height * options.scale)))
        scaled = resize(image, size, _shrink_or_cubic(cv2.INTER_CUBIC, options.scale))
    bands = slide_rows(engine, scaled, options.overlap, options.progress)
    if scaled is not image:
        bands = resize_rows(bands, scaled.shape[0], (height, width))
    mask = np.empty((height, width), dtype=np.uint8)
    prob = torch.empty((height, width), dtype=torch.float32, device=engine.device) if with_prob else None
    for start, band in bands:
        labels, band_prob = labels_and_prob(band, engine.threshold)
        rows = slice(start, start + band.shape[1])
        mask[rows] = labels.cpu().numpy()
        if prob is not None:
            prob[rows] = band_prob
    return (mask, prob) if prob is not None else mask
