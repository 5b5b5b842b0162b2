"""Crop training (``train.py --crop-size H W``): random rescale, then a random crop at native resolution.

It follows mmsegmentation's ``RandomResize`` + ``RandomCrop(cat_max_ratio=0.75)`` + ``RandomFlip``
+ photometric distortion: the image is rescaled by a ratio drawn from ``scale_range`` (relative
to its own size), a crop position is drawn uniformly, and a crop in which one class covers more
than ``cat_max_ratio`` of the labelled (non-255) pixels, or that holds a single class, is drawn
again, at most ``max_tries`` times. Where the rescaled image is smaller than the crop it is padded
bottom and right with grey 128 or the given ``fill`` (label 255). Then horizontal flip, blur and HSV
jitter (8-bit RGB only), with the same probabilities and strengths as :func:`utils.data.transforms.augment`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from utils.data.io import IGNORE_INDEX
from utils.data.transforms import GREY, AugmentParams, Fill, _shrink_or_cubic, blur, colour_jitter, resize


@dataclass(frozen=True)
class CropParams:
    """Crop ``size`` = (height, width), rescale ratio range, and the single-class rejection rule."""

    size: tuple[int, int]
    scale_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    max_tries: int = 10
    photometric: AugmentParams = field(default_factory=AugmentParams)


def rescale(image: np.ndarray, label: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Resize both by ``ratio`` (image bicubic, area when shrinking; label nearest)."""
    height, width = label.shape
    size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    if size == (width, height):
        return image, label
    image = resize(image, size, _shrink_or_cubic(cv2.INTER_CUBIC, ratio))
    return image, cv2.resize(label, size, interpolation=cv2.INTER_NEAREST_EXACT)


def _dominated(label: np.ndarray, cat_max_ratio: float) -> bool:
    """True when the crop holds fewer than two labelled classes or one covers ``cat_max_ratio`` or more of them."""
    counts = np.bincount(label.ravel(), minlength=256)
    counts = counts[np.arange(counts.size) != IGNORE_INDEX]
    counts = counts[counts > 0]
    return len(counts) < 2 or counts.max() / counts.sum() >= cat_max_ratio


def choose_crop(label: np.ndarray, size: tuple[int, int], rng: np.random.Generator,
                cat_max_ratio: float = 0.75, max_tries: int = 10) -> tuple[int, int]:
    """Top-left corner (top, left) of a random crop of ``size`` in ``label``, mmsegmentation's ``RandomCrop``.

    Each draw is uniform over the positions that keep the crop inside (0 along an axis the crop
    does not fit in). A crop dominated by one class (see :func:`_dominated`) is replaced by a new
    draw, checking at most ``max_tries`` crops; the last draw is kept whatever it holds.
    """
    crop_h, crop_w = size
    height, width = label.shape

    def draw() -> tuple[int, int]:
        return int(rng.integers(0, max(height - crop_h, 0) + 1)), int(rng.integers(0, max(width - crop_w, 0) + 1))

    top, left = draw()
    if cat_max_ratio < 1:
        for _ in range(max_tries):
            if not _dominated(label[top:top + crop_h, left:left + crop_w], cat_max_ratio):
                break
            top, left = draw()
    return top, left


def crop_or_pad(image: np.ndarray, label: np.ndarray, top: int, left: int,
                size: tuple[int, int], fill: Fill = GREY) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` crop at (top, left), padded bottom/right with ``fill`` and label 255 where the image ends."""
    crop_h, crop_w = size
    part, label_part = image[top:top + crop_h, left:left + crop_w], label[top:top + crop_h, left:left + crop_w]
    canvas = np.full((crop_h, crop_w, image.shape[2]), fill, dtype=image.dtype)
    label_canvas = np.full((crop_h, crop_w), IGNORE_INDEX, dtype=np.uint8)
    canvas[:part.shape[0], :part.shape[1]] = part
    label_canvas[:part.shape[0], :part.shape[1]] = label_part
    return canvas, label_canvas


def crop_augment(image: np.ndarray, label: np.ndarray, params: CropParams,
                 rng: np.random.Generator, fill: Fill = GREY) -> tuple[np.ndarray, np.ndarray]:
    """Rescale, crop (with the single-class rule), pad with ``fill``, flip, blur and HSV-jitter (8-bit RGB)
    one training pair."""
    image, label = rescale(image, label, rng.uniform(*params.scale_range))
    top, left = choose_crop(label, params.size, rng, params.cat_max_ratio, params.max_tries)
    image, label = crop_or_pad(image, label, top, left, params.size, fill)
    photo = params.photometric
    if rng.random() < photo.flip_p:
        image, label = np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(label[:, ::-1])
    if rng.random() < photo.blur_p:
        image = blur(image)
    return colour_jitter(image, rng, photo), label
