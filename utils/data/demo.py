"""A small deterministic synthetic dataset (circles, rectangles, triangles) in the VOC layout.

Used by ``train.py --demo`` and by the tests: it needs no download, writes in a few seconds
and is learnable from scratch on a CPU. Each shape class has its own colour family with
variation (reddish circles, greenish rectangles, bluish triangles) on textured, low-saturation
backgrounds; shapes overlap, vary in size, and some carry a thin 255 (ignore) outline like
VOC's object borders. Images have varied non-square sizes so the letterbox is exercised.
The same seed always produces the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from utils.data.io import IGNORE_INDEX, save_label
from utils.errors import UserError

DEMO_CLASSES: tuple[str, ...] = ("background", "circle", "rectangle", "triangle")
BINARY_DEMO_CLASSES: tuple[str, ...] = ("background", "object")
_MARKER = ".demo_dataset.json"


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted texture: noise, a two-colour gradient or stripes, all low in saturation."""
    base = rng.uniform(60, 190)
    tint = rng.uniform(-20, 20, 3)
    colour_a = np.clip(base + tint, 0, 255)
    colour_b = np.clip(base + rng.uniform(-50, 50) + rng.uniform(-20, 20, 3), 0, 255)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    kind = rng.integers(3)
    if kind == 0:
        mix = np.full((height, width), 0.5, np.float32)
    elif kind == 1:
        angle = rng.uniform(0, np.pi)
        ramp = xx * np.cos(angle) + yy * np.sin(angle)
        mix = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    else:
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(8, 30)
        mix = 0.5 + 0.5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period))
    image = colour_a[None, None, :] * (1 - mix[..., None]) + colour_b[None, None, :] * mix[..., None]
    image += rng.normal(0, rng.uniform(4, 14), (height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape_colour(rng: np.random.Generator, cls: int) -> tuple[int, int, int]:
    """A colour from the class's family: dominant channel high, the others low (with variation)."""
    dominant = {1: 0, 2: 1, 3: 2}[cls]
    colour = rng.uniform(0, 100, 3)
    colour[dominant] = rng.uniform(165, 255)
    return tuple(int(c) for c in colour)


def _shape_points(rng: np.random.Generator, cls: int, cx: float, cy: float, radius: float) -> np.ndarray:
    """Polygon vertices for a rectangle (rotated, random aspect) or a triangle around (cx, cy)."""
    angle = rng.uniform(0, 2 * np.pi)
    if cls == 2:
        aspect = rng.uniform(0.5, 1.0)
        half = np.array([[-1, -aspect], [1, -aspect], [1, aspect], [-1, aspect]]) * radius
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        points = half @ rot.T
    else:
        angles = angle + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.35, 0.35, 3)
        points = np.stack([np.cos(angles), np.sin(angles)], axis=1) * radius * 1.25
    points += np.array([cx, cy])
    return np.round(points).astype(np.int32)


def render_demo_sample(rng: np.random.Generator, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic sample: (H, W, 3) uint8 RGB image and (H, W) uint8 label (0..3, 255 borders)."""
    image = _background(rng, height, width)
    label = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, 4))
        radius = float(rng.uniform(0.08, 0.24) * min(width, height) * 1.3)
        cx = float(rng.uniform(radius * 0.5, width - radius * 0.5))
        cy = float(rng.uniform(radius * 0.5, height - radius * 0.5))
        colour = _shape_colour(rng, cls)
        # Paint the shape into a mask first so the image and the label get exactly the same pixels.
        mask = np.zeros((height, width), np.uint8)
        if cls == 1:
            cv2.circle(mask, (round(cx), round(cy)), round(radius), 1, thickness=-1, lineType=cv2.LINE_8)
            outline = np.zeros_like(mask)
            cv2.circle(outline, (round(cx), round(cy)), round(radius), 1, thickness=1, lineType=cv2.LINE_8)
        else:
            points = _shape_points(rng, cls, cx, cy, radius)
            cv2.fillPoly(mask, [points], 1, lineType=cv2.LINE_8)
            outline = np.zeros_like(mask)
            cv2.polylines(outline, [points], True, 1, thickness=1, lineType=cv2.LINE_8)
        inside = mask.astype(bool)
        shading = rng.normal(0, 10, (height, width, 1)) + np.asarray(colour, np.float64)
        image[inside] = np.clip(shading[inside], 0, 255).astype(np.uint8)
        label[inside] = cls
        if rng.random() < 0.4:
            label[outline.astype(bool) & inside] = IGNORE_INDEX
    return image, label


def _write_sample(root: Path, stem: str, image: np.ndarray, label: np.ndarray) -> None:
    Image.fromarray(image).save(root / "JPEGImages" / f"{stem}.jpg", format="JPEG", quality=95)
    save_label(label, root / "SegmentationClass" / f"{stem}.png")


def _read_marker(marker: Path) -> dict | None:
    """Parameters the demo folder was written with, or None when the marker is unreadable (regenerate)."""
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None


def _write_demo(root: Path, seed: int, num_train: int, num_val: int, size: tuple[int, int], params: dict) -> None:
    """Write every file of the demo dataset into the (new, empty) folder ``root``; the marker goes last."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    max_w, max_h = int(size[0]), int(size[1])
    stems = [f"demo_{i:04d}" for i in range(num_train + num_val)]
    for i, stem in enumerate(stems):
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, i])
        width = int(rng.integers(int(max_w * 0.8), max_w + 1))
        height = int(rng.integers(int(max_h * 0.8), max_h + 1))
        if rng.random() < 1 / 6:
            width, height = height, width
        image, label = render_demo_sample(rng, width, height)
        if params.get("binary"):
            # Every ignore pixel lies inside a shape, so "not background" is exactly the objects.
            label = np.where(label != 0, 255, 0).astype(np.uint8)
        _write_sample(root, stem, image, label)
    splits = root / "ImageSets" / "Segmentation"
    (splits / "train.txt").write_text("".join(f"{s}\n" for s in stems[:num_train]))
    (splits / "val.txt").write_text("".join(f"{s}\n" for s in stems[num_train:]))
    (splits / "trainval.txt").write_text("".join(f"{s}\n" for s in stems))
    names = BINARY_DEMO_CLASSES if params.get("binary") else DEMO_CLASSES
    (root / "classes.txt").write_text("".join(f"{name}\n" for name in names))
    (root / _MARKER).write_text(json.dumps(params))


def _sibling(root: Path, kind: str) -> Path:
    """Create a new hidden folder next to ``root`` (unique per call; the umask applies, unlike mkdtemp's 0700)."""
    path = root.parent / f".{root.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def make_demo_dataset(
    root: str | os.PathLike,
    seed: int = 0,
    num_train: int = 100,
    num_val: int = 20,
    size: tuple[int, int] = (200, 150),
    binary: bool = False,
) -> Path:
    """Write the demo dataset to ``root`` (VOC layout + ``classes.txt``) unless it is already there.

    ``size`` is the largest (width, height); each image's sides vary between 80% and 100% of it,
    and about one image in six is portrait. Everything derives from ``seed``: the same arguments
    give the same bytes. With ``binary`` the labels are 0/255 masks of all the shapes (how binary
    masks are usually saved; train them with ``--task binary --label-map 255:1``). A folder that
    holds something else is never overwritten (:class:`UserError`).
    The files are written into a hidden sibling folder that is renamed to ``root`` only when
    complete, so an interrupted run never leaves a half-written ``root`` behind.
    """
    root = Path(root)
    params = {"seed": int(seed), "num_train": int(num_train), "num_val": int(num_val), "size": list(size),
              "version": 1}
    if binary:
        params["binary"] = True
    marker = root / _MARKER
    if marker.is_file():
        if _read_marker(marker) == params:
            return root
    elif root.exists() and any(root.iterdir()):
        raise UserError(f"{root} already holds files and is not a demo dataset; choose an empty or new "
                        "folder for the demo data (it is never written over existing data)")
    root.parent.mkdir(parents=True, exist_ok=True)
    partial = _sibling(root, "partial")
    try:
        _write_demo(partial, seed, num_train, num_val, size, params)
        if root.exists():
            # An empty folder, or a demo dataset made with other parameters (ours, by its marker):
            # move it aside first, since a directory cannot be renamed over a non-empty one.
            old = _sibling(root, "old")
            os.replace(root, old / "data")
            os.replace(partial, root)
            shutil.rmtree(old)
        else:
            os.replace(partial, root)
    except OSError:
        # Another process (e.g. a second training rank) may have finished the same folder first.
        if _read_marker(marker) != params:
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return root
