"""Geometric and colour transforms of an image/label pair: the letterbox and the training augmentation.

:func:`letterbox` (resize keeping the aspect ratio onto a grey canvas) prepares every input at
evaluation and prediction time. :func:`augment` reproduces the original release's training
recipe (aspect jitter, scale, flip, random placement, blur, rotation, :func:`hsv_jitter`) with
OpenCV, but pads labels with 255 (ignore) instead of 0 so that padding is never trained as
background. Labels are only ever resampled nearest.

Images may have any number of channels and any of the toolkit's dtypes (rasters); ``fill`` is the
padding value (grey 128 for 8-bit input, a model's per-band mean otherwise:
:meth:`utils.data.normalize.Normalization.fill`). The HSV jitter only applies to 8-bit RGB.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np

from utils.data.io import IGNORE_INDEX
from utils.data.normalize import GREY


class Box(NamedTuple):
    """Region of a letterbox canvas that holds the resized content: rows top..top+height, cols left..left+width."""

    top: int
    left: int
    height: int
    width: int


Fill = int | np.ndarray


def channelwise(op: Callable[[np.ndarray, tuple], np.ndarray], image: np.ndarray, fill: Fill = GREY) -> np.ndarray:
    """``op(part, part_fill)`` over an (H, W, C) image of any C, keeping the channel axis.

    OpenCV's area resize and warps take at most 4 channels, and every OpenCV call drops the axis of a
    single channel: more channels go through in groups of 4, each with its own fill values (a tuple
    as OpenCV's border value takes it).
    """
    channels = image.shape[2]
    values = np.broadcast_to(np.asarray(fill, dtype=np.float64), (channels,))
    parts = []
    for start in range(0, channels, 4):
        part = op(np.ascontiguousarray(image[:, :, start:start + 4]), tuple(values[start:start + 4].tolist()))
        parts.append(part[:, :, None] if part.ndim == 2 else part)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)


def resize(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """``cv2.resize`` to ``size`` = (width, height) of an (H, W, C) image of any channel count."""
    if image.shape[2] in (3, 4):
        return cv2.resize(image, size, interpolation=interpolation)
    return channelwise(lambda part, _: cv2.resize(part, size, interpolation=interpolation), image)


def is_rgb8(image: np.ndarray) -> bool:
    """True for 8-bit three-channel images: those the colour (HSV) jitter applies to."""
    return image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3


def _shrink_or_cubic(interp: int, factor: float) -> int:
    """Use area averaging instead of cubic when shrinking: it anti-aliases like Pillow's bicubic resize."""
    return cv2.INTER_AREA if interp == cv2.INTER_CUBIC and factor < 1.0 else interp


def letterbox(
    image: np.ndarray,
    size: tuple[int, int],
    label: np.ndarray | None = None,
    image_interp: int = cv2.INTER_CUBIC,
    fill: Fill = GREY,
) -> tuple[np.ndarray, np.ndarray | None, Box]:
    """Resize keeping the aspect ratio and centre on a canvas of ``size`` = (height, width).

    The image is resized with ``image_interp`` (bicubic; area averaging when shrinking, which
    anti-aliases like the original's Pillow bicubic) onto ``fill`` (grey 128); the label is resized nearest
    onto 255 (ignore), so padding is never trained as background. Returns
    ``(image_canvas, label_canvas or None, Box)`` where the Box is the content region.
    """
    height, width = int(size[0]), int(size[1])
    ih, iw = image.shape[:2]
    scale = min(width / iw, height / ih)
    nw = min(width, max(1, round(iw * scale)))
    nh = min(height, max(1, round(ih * scale)))
    box = Box((height - nh) // 2, (width - nw) // 2, nh, nw)
    canvas = np.full((height, width, image.shape[2]), fill, dtype=image.dtype)
    resized = image if (nw, nh) == (iw, ih) else resize(image, (nw, nh), _shrink_or_cubic(image_interp, scale))
    canvas[box.top:box.top + nh, box.left:box.left + nw] = resized
    label_canvas = None
    if label is not None:
        label_canvas = np.full((height, width), IGNORE_INDEX, dtype=np.uint8)
        label_resized = label if (nw, nh) == (iw, ih) else cv2.resize(
            label, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT)
        label_canvas[box.top:box.top + nh, box.left:box.left + nw] = label_resized
    return canvas, label_canvas, box


@dataclass(frozen=True)
class AugmentParams:
    """The original release's augmentation strengths (jitter, scale range, probabilities, HSV gains)."""

    jitter: float = 0.3
    scale_range: tuple[float, float] = (0.25, 2.0)
    flip_p: float = 0.5
    blur_p: float = 0.25
    rotate_p: float = 0.25
    max_rotation: int = 10
    hue: float = 0.1
    sat: float = 0.7
    val: float = 0.3


def _place(image: np.ndarray, label: np.ndarray, size: tuple[int, int], nw: int, nh: int, dx: int, dy: int,
           flip: bool, fill: Fill = GREY) -> tuple[np.ndarray, np.ndarray]:
    """Resize to (nw, nh), optionally mirror, and paste at (dx, dy) on a ``fill``/255 canvas (cropping any overflow).

    Only the visible window is flipped and copied. OpenCV's separable resize of the whole image
    is cheaper than warping just the visible window with a cubic kernel, so the image is resized whole.
    """
    h, w = size
    ih, iw = image.shape[:2]
    canvas = np.full((h, w, image.shape[2]), fill, dtype=image.dtype)
    label_canvas = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
    x0, x1 = max(dx, 0), min(dx + nw, w)
    y0, y1 = max(dy, 0), min(dy + nh, h)
    if x1 <= x0 or y1 <= y0:
        return canvas, label_canvas
    interp = _shrink_or_cubic(cv2.INTER_CUBIC, min(nw / iw, nh / ih))
    part = resize(image, (nw, nh), interp)
    label_part = cv2.resize(label, (nw, nh), interpolation=cv2.INTER_NEAREST_EXACT)
    if flip:
        part, label_part = part[:, ::-1], label_part[:, ::-1]
    canvas[y0:y1, x0:x1] = part[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    label_canvas[y0:y1, x0:x1] = label_part[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
    return canvas, label_canvas


def hsv_jitter(image: np.ndarray, gains: np.ndarray) -> np.ndarray:
    """Multiply hue (mod 180), saturation and value by ``gains`` through lookup tables (uint8 in, uint8 out)."""
    hue, sat, val = cv2.split(cv2.cvtColor(image, cv2.COLOR_RGB2HSV))
    x = np.arange(256, dtype=np.float32)
    lut_hue = ((x * np.float32(gains[0])) % 180).astype(np.uint8)
    lut_sat = np.clip(x * np.float32(gains[1]), 0, 255).astype(np.uint8)
    lut_val = np.clip(x * np.float32(gains[2]), 0, 255).astype(np.uint8)
    merged = cv2.merge((cv2.LUT(hue, lut_hue), cv2.LUT(sat, lut_sat), cv2.LUT(val, lut_val)))
    return cv2.cvtColor(merged, cv2.COLOR_HSV2RGB)


def augment(
    image: np.ndarray,
    label: np.ndarray,
    size: tuple[int, int],
    rng: np.random.Generator,
    params: AugmentParams | None = None,
    fill: Fill = GREY,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the original release's training augmentation; returns a (H, W, C) image and (H, W) label.

    Steps: aspect ratio x U(1-j, 1+j) / U(1-j, 1+j); longer side scaled by U(0.25, 2) relative to
    the input size; horizontal flip (p 0.5); paste at a random offset on grey 128 (label 255);
    5x5 Gaussian blur (p 0.25); rotation by an integer angle in [-10, 10] about the centre
    (p 0.25; image cubic with ``fill`` borders, label nearest with 255 borders); HSV jitter (8-bit RGB
    only; the gains are drawn for every image, so the random stream does not depend on the data).
    Labels are only ever resampled nearest, so they keep their source values plus 255.
    """
    params = params or AugmentParams()
    h, w = size
    ih, iw = image.shape[:2]
    jitter = params.jitter
    new_ar = iw / ih * rng.uniform(1 - jitter, 1 + jitter) / rng.uniform(1 - jitter, 1 + jitter)
    scale = rng.uniform(*params.scale_range)
    if new_ar < 1:
        nh = int(scale * h)
        nw = int(nh * new_ar)
    else:
        nw = int(scale * w)
        nh = int(nw / new_ar)
    nw, nh = max(nw, 1), max(nh, 1)
    flip = rng.random() < params.flip_p
    # Like the original: when the image overflows the canvas the offset is negative (a random crop).
    dx = int((w - nw) * rng.random())
    dy = int((h - nh) * rng.random())
    image, label = _place(image, label, (h, w), nw, nh, dx, dy, flip, fill)

    if rng.random() < params.blur_p:
        image = blur(image)
    if rng.random() < params.rotate_p:
        angle = int(rng.integers(-params.max_rotation, params.max_rotation + 1))
        matrix = cv2.getRotationMatrix2D((w // 2, h // 2), -angle, 1.0)
        image = channelwise(lambda part, border: cv2.warpAffine(
            part, matrix, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=border),
            image, fill)
        label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE_INDEX)
    return colour_jitter(image, rng, params), label


def blur(image: np.ndarray) -> np.ndarray:
    """The 5x5 Gaussian blur of the augmentation, for any channel count."""
    return channelwise(lambda part, _: cv2.GaussianBlur(part, (5, 5), 0), image)


def colour_jitter(image: np.ndarray, rng: np.random.Generator, params: AugmentParams) -> np.ndarray:
    """HSV jitter of an 8-bit RGB image with gains drawn from ``rng``; other images are returned as they are
    (the gains are drawn all the same, so the random stream does not depend on the data)."""
    gains = rng.uniform(-1, 1, 3) * np.array([params.hue, params.sat, params.val]) + 1
    return hsv_jitter(image, gains) if is_rgb8(image) else image
