"""Datasets in the VOC layout: image/label reading, letterbox, the training augmentation and loaders.

A data root holds ``JPEGImages/`` (any of :data:`IMAGE_EXTENSIONS`, found by stem),
``SegmentationClass/`` (single-channel 8-bit PNG class indices, 255 = ignore) and
``ImageSets/Segmentation/{train,val}.txt``. Samples stay compact (uint8 image and uint8
label tensors); the float conversion and /255 scaling happen on the device in
:func:`to_device`, so no float64 arrays and no one-hot labels are ever built on the CPU.

The training augmentation reproduces the original release's recipe (aspect jitter, scale,
flip, random placement, blur, rotation, HSV jitter) with OpenCV, but pads labels with 255
(ignore) instead of 0 so that padding is never trained as background.
"""

from __future__ import annotations

import math
import os
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from utils.errors import UserError

VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255
GREY = 128



def default_class_names(num_classes: int) -> list[str]:
    """Names for a model or dataset without a class list: VOC's for 21 classes, else background, class_1, ...

    The one rule used everywhere (evaluation reports, the predictor, voc_annotation.py), so the
    same class count always gets the same names.
    """
    if num_classes == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return ["background", *(f"class_{i}" for i in range(1, num_classes))][:max(num_classes, 0)]


LAYOUT_TREE = """\
<data root>/                      (default VOCdevkit/VOC2007)
    JPEGImages/                   images: <name>.jpg (or .jpeg .png .bmp .tif .tiff .webp)
    SegmentationClass/            labels: <name>.png, one channel, pixel = class index, 255 = ignore
    ImageSets/Segmentation/       train.txt, val.txt: one <name> per line (voc_annotation.py writes them)"""


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
    array = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None:
        # OpenCV refuses the file (e.g. truncated): let Pillow produce the precise error.
        try:
            with Image.open(path) as image:
                image.load()
                return image_to_rgb(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"cannot read image {path} ({exc}); the file is damaged, truncated or not an "
                            "image: replace it or remove it from the split files") from None
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB)


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


class Box(NamedTuple):
    """Region of a letterbox canvas that holds the resized content: rows top..top+height, cols left..left+width."""

    top: int
    left: int
    height: int
    width: int


def _shrink_or_cubic(interp: int, factor: float) -> int:
    """Use area averaging instead of cubic when shrinking: it anti-aliases like Pillow's bicubic resize."""
    return cv2.INTER_AREA if interp == cv2.INTER_CUBIC and factor < 1.0 else interp


def letterbox(
    image: np.ndarray,
    size: tuple[int, int],
    label: np.ndarray | None = None,
    image_interp: int = cv2.INTER_CUBIC,
) -> tuple[np.ndarray, np.ndarray | None, Box]:
    """Resize keeping the aspect ratio and centre on a canvas of ``size`` = (height, width).

    The image is resized with ``image_interp`` (bicubic; area averaging when shrinking, which
    anti-aliases like the original's Pillow bicubic) onto grey 128; the label is resized nearest
    onto 255 (ignore), so padding is never trained as background. Returns
    ``(image_canvas, label_canvas or None, Box)`` where the Box is the content region.
    """
    height, width = int(size[0]), int(size[1])
    ih, iw = image.shape[:2]
    scale = min(width / iw, height / ih)
    nw = min(width, max(1, round(iw * scale)))
    nh = min(height, max(1, round(ih * scale)))
    box = Box((height - nh) // 2, (width - nw) // 2, nh, nw)
    canvas = np.full((height, width, 3), GREY, dtype=np.uint8)
    resized = image if (nw, nh) == (iw, ih) else cv2.resize(
        image, (nw, nh), interpolation=_shrink_or_cubic(image_interp, scale))
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
           flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Resize to (nw, nh), optionally mirror, and paste at (dx, dy) on a grey/255 canvas (cropping any overflow).

    Only the visible window is flipped and copied. OpenCV's separable resize of the whole image
    is cheaper than warping just the visible window with a cubic kernel, so the image is resized whole.
    """
    h, w = size
    ih, iw = image.shape[:2]
    canvas = np.full((h, w, 3), GREY, dtype=np.uint8)
    label_canvas = np.full((h, w), IGNORE_INDEX, dtype=np.uint8)
    x0, x1 = max(dx, 0), min(dx + nw, w)
    y0, y1 = max(dy, 0), min(dy + nh, h)
    if x1 <= x0 or y1 <= y0:
        return canvas, label_canvas
    interp = _shrink_or_cubic(cv2.INTER_CUBIC, min(nw / iw, nh / ih))
    part = cv2.resize(image, (nw, nh), interpolation=interp)
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
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the original release's training augmentation; returns a (H, W, 3) image and (H, W) label.

    Steps: aspect ratio x U(1-j, 1+j) / U(1-j, 1+j); longer side scaled by U(0.25, 2) relative to
    the input size; horizontal flip (p 0.5); paste at a random offset on grey 128 (label 255);
    5x5 Gaussian blur (p 0.25); rotation by an integer angle in [-10, 10] about the centre
    (p 0.25; image cubic with grey borders, label nearest with 255 borders); HSV jitter.
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
    image, label = _place(image, label, (h, w), nw, nh, dx, dy, flip)

    if rng.random() < params.blur_p:
        image = cv2.GaussianBlur(image, (5, 5), 0)
    if rng.random() < params.rotate_p:
        angle = int(rng.integers(-params.max_rotation, params.max_rotation + 1))
        matrix = cv2.getRotationMatrix2D((w // 2, h // 2), -angle, 1.0)
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=(GREY, GREY, GREY))
        label = cv2.warpAffine(label, matrix, (w, h), flags=cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=IGNORE_INDEX)
    gains = rng.uniform(-1, 1, 3) * np.array([params.hue, params.sat, params.val]) + 1
    return hsv_jitter(image, gains), label


def _missing_layout_error(root: Path, what: Path) -> UserError:
    hint = ("run voc_annotation.py --data-root to write the split files" if what.suffix == ".txt"
            else "give the right --data-root, or put your images and labels in those folders")
    return UserError(f"{what} not found. The data root {root} must look like this:\n{LAYOUT_TREE}\n"
                     f"Fix: {hint}")


def check_layout(root: Path) -> None:
    """Raise :class:`UserError` showing the expected tree if the data root or its image/label folders are missing."""
    for path in (root, root / "JPEGImages", root / "SegmentationClass"):
        if not path.is_dir():
            raise _missing_layout_error(root, path)


def index_images(folder: Path) -> dict[str, Path]:
    """Map file stem -> image path for every file in ``folder`` with an image extension (first extension wins)."""
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    found: dict[str, tuple[int, Path]] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, ext = os.path.splitext(entry.name)
            order = rank.get(ext.lower())
            if order is not None and entry.is_file() and (stem not in found or order < found[stem][0]):
                found[stem] = (order, Path(entry.path))
    return {stem: path for stem, (_, path) in found.items()}


def parse_split_file(path: str | os.PathLike) -> list[str]:
    """Stems listed by a split file: the first token of each non-blank line, an image extension dropped.

    VOC split lines may carry a second column (e.g. ``2007_000032 1``) and hand-written ones an
    extension (``a.jpg``); both name the stem ``a``. Raises :class:`UserError` if unreadable.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read split file {path} ({exc}); rerun voc_annotation.py --force to rewrite it") \
            from None
    stems = []
    for line in text.splitlines():
        tokens = line.split()
        if tokens:
            token = tokens[0]
            stems.append(os.path.splitext(token)[0] if token.lower().endswith(IMAGE_EXTENSIONS) else token)
    return stems


def size_mismatch_message(image_path: str | os.PathLike, image_size: tuple[int, int],
                          label_path: str | os.PathLike, label_size: tuple[int, int], hint: str = "") -> str:
    """The one wording of an image/label size mismatch; sizes are (width, height), ``hint`` is appended."""
    text = (f"size mismatch: image {image_path} is {image_size[0]}x{image_size[1]} but label {label_path} is "
            f"{label_size[0]}x{label_size[1]} (width x height)")
    return f"{text}; {hint}" if hint else text


def read_split(root: Path, split: str) -> list[str]:
    """Read ``ImageSets/Segmentation/<split>.txt`` as a list of stems (see :func:`parse_split_file`)."""
    path = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise _missing_layout_error(root, path)
    stems = parse_split_file(path)
    if not stems:
        raise UserError(f"split file {path} is empty: it must list one image name per line. "
                        "Run voc_annotation.py --force to rewrite the split files")
    return stems


class SegmentationDataset(Dataset):
    """Image/label pairs of one split in the VOC layout, letterboxed (``train=False``) or augmented.

    ``__getitem__`` returns ``(image uint8 tensor (3, H, W), label uint8 tensor (H, W))`` at
    ``input_size`` = (height, width); the image is a channels-first view of an HWC array (call
    ``.contiguous()`` if you need one; the loader's collation stacks it into a contiguous batch).
    The layout, the split names and every pair's header (both files open, sizes match, label is
    single-channel) are validated in ``__init__``; label values above the class count are caught
    cheaply when a sample is read.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        input_size: tuple[int, int] | int,
        num_classes: int,
        train: bool,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.root = Path(root)
        self.split = split
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.num_classes = int(num_classes)
        self.train = bool(train)
        self.class_names = list(class_names) if class_names is not None else None
        self.rng = np.random.default_rng()
        check_layout(self.root)
        self.stems = read_split(self.root, split)
        images = index_images(self.root / "JPEGImages")
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        self._images: list[Path] = []
        self._labels: list[Path] = []
        for stem in self.stems:
            image_path = images.get(stem)
            if image_path is None:
                raise UserError(f"{split_file} names '{stem}' but there is no image JPEGImages/{stem}"
                                f"{{{','.join(IMAGE_EXTENSIONS)}}} in {self.root}: add the image or rerun "
                                "voc_annotation.py --force to rewrite the split files")
            label_path = self.root / "SegmentationClass" / f"{stem}.png"
            if not label_path.is_file():
                raise UserError(f"{split_file} names '{stem}' but its label {label_path} does not exist: "
                                "add the label or rerun voc_annotation.py --force")
            self._images.append(image_path)
            self._labels.append(label_path)
        self._check_headers()

    def _check_headers(self) -> None:
        """Open every pair lazily (header only) to catch unreadable files, size mismatches and colour labels."""
        for image_path, label_path in zip(self._images, self._labels, strict=True):
            try:
                with Image.open(image_path) as image:
                    image_size = image.size
                    if exif_orientation(image) in (5, 6, 7, 8):
                        # EXIF orientations that rotate by 90 degrees swap width and height.
                        image_size = image_size[::-1]
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise UserError(f"cannot read image {image_path} ({exc}); replace it or remove "
                                f"'{image_path.stem}' from the split file") from None
            try:
                with Image.open(label_path) as label:
                    label_size = label.size
                    if label.mode not in LABEL_MODES:
                        label_from_pil(label, label_path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise UserError(f"cannot read label {label_path} ({exc}); replace it or remove "
                                f"'{label_path.stem}' from the split file") from None
            if image_size != label_size:
                raise UserError(size_mismatch_message(image_path, image_size, label_path, label_size,
                                                      "a label must have exactly its image's size"))

    def __len__(self) -> int:
        return len(self.stems)

    def image_path(self, index: int) -> Path:
        """Path of the image of sample ``index``."""
        return self._images[index]

    def label_path(self, index: int) -> Path:
        """Path of the label of sample ``index``."""
        return self._labels[index]

    def set_rng(self, rng: np.random.Generator) -> None:
        """Use ``rng`` for the augmentation (the loader's worker seeding calls this)."""
        self.rng = rng

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read sample ``index`` at its original size: (H, W, 3) uint8 RGB image and (H, W) uint8 label."""
        image = load_image(self._images[index])
        label = load_label(self._labels[index])
        if image.shape[:2] != label.shape:
            raise UserError(size_mismatch_message(self._images[index], (image.shape[1], image.shape[0]),
                                                  self._labels[index], (label.shape[1], label.shape[0])))
        peak = int(label.max(initial=0))
        if peak >= self.num_classes and (peak != IGNORE_INDEX or bool(
                np.any((label >= self.num_classes) & (label != IGNORE_INDEX)))):
            bad = np.unique(label[(label >= self.num_classes) & (label != IGNORE_INDEX)])
            raise UserError(f"label {self._labels[index]} holds value(s) {', '.join(map(str, bad[:8]))} but "
                            f"there are only {self.num_classes} classes (0..{self.num_classes - 1}, 255 = "
                            "ignore). Check --num-classes / the class list, or run voc_annotation.py")
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.load_pair(index)
        if self.train:
            image, label = augment(image, label, self.input_size, self.rng)
        else:
            image, label, _ = letterbox(image, self.input_size, label)
        # A (3, H, W) view of the HWC array: the batch collation makes the one contiguous copy.
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label)


def worker_seed(seed: int, rank: int, worker: int, epoch: int) -> np.random.SeedSequence:
    """Seed sequence for one data worker: distinct for every (seed, rank, worker, epoch) and reproducible."""
    return np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(rank), int(worker), int(epoch)])


def _seed_everything_here(dataset: Dataset, sequence: np.random.SeedSequence) -> None:
    """Seed this process's numpy/random/torch generators and the dataset's augmentation generator."""
    words = sequence.generate_state(4)
    random.seed(int(words[0]))
    # Third-party code may draw from the legacy global generator: seed it too.
    np.random.seed(int(words[1]))
    torch.manual_seed(int(words[2]) << 32 | int(words[3]))
    if hasattr(dataset, "set_rng"):
        dataset.set_rng(np.random.default_rng(sequence))


class _WorkerInit:
    """Picklable worker_init_fn; the loader updates ``epoch`` before each pass starts its workers."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank, self.epoch = seed, rank, 0

    def __call__(self, worker_id: int) -> None:
        info = torch.utils.data.get_worker_info()
        _seed_everything_here(info.dataset, worker_seed(self.seed, self.rank, worker_id, self.epoch))


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank`` in order: no shuffling, no padding, no duplicates."""

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _plain_worker_errors(batches):
    """Re-raise a worker's UserError with its own message, without the worker traceback torch adds."""
    try:
        yield from batches
    except UserError as exc:
        text = str(exc)
        if "DataLoader worker" not in text or "UserError: " not in text:
            raise
        raise UserError(text.rsplit("UserError: ", 1)[-1].strip()) from None


class SeededLoader(DataLoader):
    """DataLoader whose shuffling and augmentation are a pure function of (seed, rank, worker, epoch).

    Call :func:`set_loader_epoch` before each epoch; an epoch that is iterated a second time
    without it advances to the next epoch on its own, so augmentations never repeat by mistake.
    Workers are started afresh for every pass (no persistent workers) so each pass reseeds them.
    """

    def __init__(self, *args, seed: int, rank: int, **kwargs) -> None:
        self.seed, self.rank = int(seed), int(rank)
        self.worker_init = _WorkerInit(self.seed, self.rank)
        self.shuffle_generator = torch.Generator()
        super().__init__(*args, worker_init_fn=self.worker_init, generator=self.shuffle_generator, **kwargs)
        self.epoch = 0
        self._epoch_used = False

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch``."""
        self.epoch = int(epoch)
        self._epoch_used = False

    def __iter__(self):
        if self._epoch_used:
            self.set_epoch(self.epoch + 1)
        self._epoch_used = True
        self.worker_init.epoch = self.epoch
        self.shuffle_generator.manual_seed(
            int(worker_seed(self.seed, self.rank, 1 << 30, self.epoch).generate_state(1, np.uint64)[0] >> 1))
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.epoch)
        if self.num_workers == 0 and hasattr(self.dataset, "set_rng"):
            # In-process loading: seed only the dataset's own generator. Reseeding the global
            # random/numpy/torch generators here would reset the training process's streams
            # (dropout, anything else drawing from them) on every pass.
            self.dataset.set_rng(np.random.default_rng(worker_seed(self.seed, self.rank, 0, self.epoch)))
        return _plain_worker_errors(super().__iter__())


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    workers: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool | None = None,
) -> SeededLoader:
    """Build the loader for a split: training shuffles, validation keeps order and every sample.

    With ``world_size > 1`` training uses a :class:`DistributedSampler` (seeded by ``seed``) and
    validation a :class:`ShardSampler` (each sample on exactly one rank). ``drop_last`` defaults
    to True for training when there is at least one full batch, and is always False for validation.
    Worker seeds derive from (seed, rank, worker, epoch); see :func:`set_loader_epoch`.
    """
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    length = len(dataset)
    if train:
        per_rank = math.ceil(length / world_size)
        if drop_last is None:
            drop_last = per_rank >= batch_size
        if world_size > 1:
            sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                         seed=int(seed), drop_last=False)
            shuffle = None
        else:
            sampler, shuffle = None, True
    else:
        drop_last = False
        sampler = ShardSampler(length, rank, world_size) if world_size > 1 else None
        shuffle = False
    return SeededLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=max(0, int(workers)),
        pin_memory=torch.cuda.is_available(),
        drop_last=bool(drop_last),
        seed=seed,
        rank=rank,
    )


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch that seeds the next pass of ``loader`` (shuffle order and worker augmentation)."""
    if isinstance(loader, SeededLoader):
        loader.set_epoch(epoch)
    elif isinstance(getattr(loader, "sampler", None), DistributedSampler):
        loader.sampler.set_epoch(epoch)


def to_device(
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str,
    channels_last: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move a uint8 batch to ``device``, then make float images in [0, 1] and int64 labels there."""
    images = images.to(device, non_blocking=True).float().div_(255.0)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True).long()
