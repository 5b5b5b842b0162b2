"""Reading and writing images, labels and class lists; the VOC classes, palette and constants.

Images are read as uint8 (H, W, 3) RGB whatever their mode (EXIF orientation applied, 16-bit
scaled to 8); labels as uint8 (H, W) class indices, 255 = :data:`IGNORE_INDEX`, from
single-channel 8-bit PNGs; a label in colour is refused with an explanation. Labels are
written as palette PNGs whose pixel values stay the class indices.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from utils.errors import UserError

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255


def default_class_names(num_classes: int) -> list[str]:
    """Names for a model or dataset without a class list: VOC's for 21 classes, else background, class_1, ...

    The one rule used everywhere (evaluation reports, the predictor, voc_annotation.py), so the
    same class count always gets the same names.
    """
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return ["background", *(f"class_{i}" for i in range(1, num_classes))][:max(num_classes, 0)]


def voc_palette() -> list[int]:
    """Return the standard 256-entry VOC colour map as a flat ``[r, g, b, ...]`` list (index 255 is cream)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def save_label(label: np.ndarray, path: str | os.PathLike, palette: Sequence[int] | None = None) -> None:
    """Write a class-index label as a palette PNG (indices stay the pixel values).

    ``palette`` is a flat ``[r, g, b, ...]`` list; the VOC colours by default.
    """
    image = Image.fromarray(np.ascontiguousarray(label, dtype=np.uint8), mode="L").convert("P")
    image.putpalette(list(palette) if palette is not None else voc_palette())
    image.save(path, format="PNG")


def read_class_names(path: str | os.PathLike) -> list[str]:
    """Read class names from a text file, one per line (blank lines and surrounding spaces ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"class list {path} not found: give a text file with one class name per line, "
                        "background first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read class list {path}: {exc}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) < 2:
        raise UserError(f"class list {path} holds {len(names)} name(s); it needs at least 2 "
                        "(background first, then one name per class, one per line)")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise UserError(f"class list {path} names {', '.join(duplicates)} more than once; each class once")
    return names


def _scale_to_uint8(array: np.ndarray, max_value: float) -> np.ndarray:
    """Map an integer/float array from [0, max_value] onto [0, 255] with rounding."""
    scaled = np.clip(array.astype(np.float32) * (255.0 / max_value) + 0.5, 0, 255)
    return scaled.astype(np.uint8)


def image_to_rgb(image: Image.Image) -> np.ndarray:
    """Turn an opened PIL image of any mode into a uint8 (H, W, 3) RGB array, EXIF orientation applied.

    Grey, palette, CMYK, YCbCr and alpha modes are converted (alpha is dropped); 16-bit and
    32-bit integer images are scaled from their full range to 8 bits, float images from [0, 1].
    """
    if exif_orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if mode == "F":
            gray = _scale_to_uint8(array, 1.0 if float(np.nanmax(array, initial=0)) <= 1.0 else 255.0)
        else:
            # "I" also holds 16-bit PNGs on some Pillow versions: treat it as 16 bits unless it goes beyond.
            peak = int(array.max(initial=0))
            gray = _scale_to_uint8(array, 65535.0 if peak <= 65535 else float(2**32 - 1))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.array(image)  # a writable copy (np.asarray of a Pillow image is read-only)


def exif_orientation(image: Image.Image) -> int:
    """EXIF orientation tag of an opened image (1 = upright) without decoding the pixels."""
    if image.format == "PNG" and "exif" not in image.info:
        # Pillow's PNG getexif() decodes the whole image to look for a late eXIf chunk; skip that.
        return 1
    try:
        return int(image.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError, TypeError, KeyError, struct.error):
        return 1  # a damaged EXIF block should not make the pixels unreadable: treat as upright


def _ends_with_jpeg_eoi(path: Path) -> bool:
    """True when the file ends with the JPEG end-of-image marker, i.e. it is not cut short."""
    with open(path, "rb") as handle:
        handle.seek(-2, os.SEEK_END)
        return handle.read(2) == b"\xff\xd9"


def _opencv_decodes_exactly(image: Image.Image, path: Path) -> bool:
    """Plain RGB PNGs and complete RGB JPEGs without an orientation tag: OpenCV decodes them faster.

    OpenCV fills a truncated JPEG with grey instead of failing, so JPEGs that do not end with
    their end marker go through Pillow, which reports them.
    """
    if image.mode != "RGB" or image.format not in ("PNG", "JPEG") or exif_orientation(image) != 1:
        return False
    return image.format == "PNG" or _ends_with_jpeg_eoi(path)


# OpenCV >= 4.10 decodes straight to RGB (a third faster at 1080p than BGR and a conversion).
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB; any mode and EXIF orientation are handled.

    Plain RGB PNGs and JPEGs are decoded with OpenCV (faster); everything else goes through
    Pillow. Raises :class:`UserError` for a missing, unreadable or truncated file.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            if not _opencv_decodes_exactly(image, path):
                image.load()
                return image_to_rgb(image)
    except FileNotFoundError:
        raise UserError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path} ({exc}); the file is damaged, truncated or not an "
                        "image: replace it or remove it from the split files") from None
    array = cv2.imread(str(path), (_IMREAD_RGB or cv2.IMREAD_COLOR) | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None:
        # OpenCV refuses the file (e.g. truncated): let Pillow produce the precise error.
        try:
            with Image.open(path) as image:
                image.load()
                return image_to_rgb(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"cannot read image {path} ({exc}); the file is damaged, truncated or not an "
                            "image: replace it or remove it from the split files") from None
    return array if _IMREAD_RGB else cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


LABEL_MODES = ("L", "P", "1")


def label_from_pil(image: Image.Image, path: str | os.PathLike) -> np.ndarray:
    """Turn an opened label image into a uint8 (H, W) index array; :class:`UserError` if not one 8-bit channel."""
    if image.mode in ("L", "P"):
        return np.array(image)  # writable, unlike np.asarray of a Pillow image
    if image.mode == "1":
        return np.asarray(image).astype(np.uint8)
    if image.mode in ("RGB", "RGBA"):
        raise UserError(f"label {path} is a colour ({image.mode}) image; labels must be single-channel PNGs "
                        "whose pixel values are class indices (0 = background, 1, 2, ...; 255 = ignore). "
                        "Run voc_annotation.py: it explains and can convert VOC-palette colours (--convert-rgb)")
    raise UserError(f"label {path} has mode {image.mode}; labels must be single-channel 8-bit PNGs "
                    "(grey or palette) holding class indices, 255 = ignore. Re-save it as 8-bit")


def load_label(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG as a uint8 (H, W) class-index array; :class:`UserError` if not single-channel 8-bit."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return label_from_pil(image, path)
    except FileNotFoundError:
        raise UserError(f"label {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read label {path} ({exc}); the file is damaged, truncated or not a PNG: "
                        "replace it or remove its name from the split files") from None
