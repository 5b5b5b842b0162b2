"""Import a folder of labelme JSON annotations into the VOC layout.

Each ``*.json`` becomes ``JPEGImages/<stem>.<ext>`` (the original image bytes, taken from the
embedded ``imageData`` or from ``imagePath``) and ``SegmentationClass/<stem>.png`` (palette PNG
of class indices). Polygons, rectangles and circles are filled in file order, so later shapes
paint over earlier ones; lines and points have no area and are skipped. Run it through
``voc_annotation.py --from-labelme DIR``, which then writes the splits and checks the result.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from utils.data.io import exif_orientation, save_label
from utils.errors import UserError

AREA_SHAPES = ("polygon", "rectangle", "circle", "mask")
SKIPPED_SHAPES = ("line", "linestrip", "point", "points")
BACKGROUND_ALIASES = ("_background_", "background", "__background__")


@dataclass
class LabelmeResult:
    """What :func:`convert_labelme` wrote: the number of samples and notes about skipped shapes."""

    written: int = 0
    notes: list[str] = field(default_factory=list)


def _class_index(name: str, class_names: Sequence[str], json_path: Path) -> int:
    lookup = {n: i for i, n in enumerate(class_names)}
    if name in lookup:
        return lookup[name]
    if name in BACKGROUND_ALIASES:
        return 0
    raise UserError(f"{json_path}: shape label '{name}' is not in the class list ({', '.join(class_names)}); "
                    "add it to the --classes file or rename the shape in labelme")


def _open_image_bytes(data: bytes, source: str, json_path: Path) -> tuple[Image.Image, str]:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{json_path}: cannot read its image ({source}): {exc}") from None
    ext = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}.get(image.format or "")
    return image, ext or ".png"


def _read_image(record: dict, json_path: Path) -> tuple[Image.Image, bytes, str]:
    """The annotated image, its original bytes and the extension to save them under."""
    embedded = record.get("imageData")
    if embedded:
        try:
            data = base64.b64decode(embedded, validate=False)
        except (binascii.Error, ValueError) as exc:
            raise UserError(f"{json_path}: imageData is not valid base64 ({exc})") from None
        image, ext = _open_image_bytes(data, "embedded imageData", json_path)
        return image, data, ext
    image_path = record.get("imagePath")
    if not image_path:
        raise UserError(f"{json_path}: no imageData and no imagePath; save it again from labelme")
    path = (json_path.parent / image_path.replace("\\", "/")).resolve()
    if not path.is_file():
        raise UserError(f"{json_path}: its image {path} (imagePath '{image_path}') does not exist; put the "
                        "image there or re-save the JSON with 'Save image data' enabled")
    data = path.read_bytes()
    image, ext = _open_image_bytes(data, str(path), json_path)
    return image, data, ext


def _points(shape: dict, json_path: Path, minimum: int) -> list[tuple[float, float]]:
    points = shape.get("points") or []
    try:
        xy = [(float(p[0]), float(p[1])) for p in points]
    except (TypeError, ValueError, IndexError):
        raise UserError(f"{json_path}: shape '{shape.get('label')}' has malformed points") from None
    if len(xy) < minimum:
        raise UserError(f"{json_path}: {shape.get('shape_type', 'polygon')} '{shape.get('label')}' has "
                        f"{len(xy)} point(s), needs at least {minimum}; fix or delete it in labelme")
    return xy


def rasterize_shapes(shapes: Sequence[dict], size: tuple[int, int], class_names: Sequence[str],
                     json_path: Path, notes: list[str] | None = None) -> np.ndarray:
    """Paint labelme shapes into a (H, W) uint8 class-index label of ``size`` = (width, height), in order."""
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for shape in shapes:
        kind = shape.get("shape_type") or "polygon"
        name = str(shape.get("label", ""))
        if kind in SKIPPED_SHAPES:
            if notes is not None:
                notes.append(f"{json_path.name}: {kind} '{name}' has no area, skipped")
            continue
        if kind not in AREA_SHAPES:
            raise UserError(f"{json_path}: shape type '{kind}' of '{name}' is not supported "
                            f"(supported: {', '.join(AREA_SHAPES)})")
        index = _class_index(name, class_names, json_path)
        if kind == "polygon":
            draw.polygon(_points(shape, json_path, 3), fill=index, outline=index)
        elif kind == "rectangle":
            (x1, y1), (x2, y2) = _points(shape, json_path, 2)[:2]
            draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], fill=index, outline=index)
        elif kind == "circle":
            (cx, cy), (px, py) = _points(shape, json_path, 2)[:2]
            radius = ((px - cx) ** 2 + (py - cy) ** 2) ** 0.5
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=index, outline=index)
        else:
            _paint_mask(canvas, shape, index, json_path)
    return np.asarray(canvas).copy()


def _paint_mask(canvas: Image.Image, shape: dict, index: int, json_path: Path) -> None:
    """labelme's 'mask' shape: a base64 PNG mask for the box given by its two points."""
    (x1, y1), _ = _points(shape, json_path, 2)[:2]
    try:
        mask = Image.open(io.BytesIO(base64.b64decode(shape.get("mask") or ""))).convert("L")
    except (binascii.Error, ValueError, OSError, UnidentifiedImageError) as exc:
        raise UserError(f"{json_path}: mask shape '{shape.get('label')}' has unreadable mask data ({exc})") from None
    binary = mask.point(lambda v: 255 if v else 0)
    canvas.paste(index, (round(x1), round(y1)), binary)


def convert_labelme(
    json_dir: str | os.PathLike,
    out_root: str | os.PathLike,
    class_names: Sequence[str],
    force: bool = False,
) -> LabelmeResult:
    """Convert every ``*.json`` in ``json_dir`` into ``out_root/JPEGImages`` and ``out_root/SegmentationClass``.

    Existing output files are never replaced unless ``force``. All JSON files are parsed and
    rasterised before anything is written, so a bad file leaves the output untouched.
    """
    json_dir, out_root = Path(json_dir), Path(out_root)
    if not json_dir.is_dir():
        raise UserError(f"labelme folder {json_dir} not found")
    files = sorted(json_dir.glob("*.json"))
    if not files:
        raise UserError(f"no labelme .json files in {json_dir}")
    result = LabelmeResult()
    prepared = []
    for json_path in files:
        try:
            record = json.loads(json_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{json_path} is not a readable labelme JSON file ({exc})") from None
        if not isinstance(record, dict) or "shapes" not in record:
            raise UserError(f"{json_path} is not a labelme annotation (no 'shapes' list)")
        image, data, ext = _read_image(record, json_path)
        # The size as the image will be read (EXIF applied), without converting the pixels just for it.
        width, height = image.size
        if exif_orientation(image) in (5, 6, 7, 8):
            width, height = height, width
        expected = (record.get("imageWidth"), record.get("imageHeight"))
        if None not in expected and tuple(int(v) for v in expected) != (width, height):
            raise UserError(f"{json_path}: the JSON says the image is {expected[0]}x{expected[1]} but the image "
                            f"is {width}x{height}; re-open and save it in labelme")
        label = rasterize_shapes(record["shapes"], (width, height), class_names, json_path, result.notes)
        prepared.append((json_path.stem, data, ext, label))

    image_dir, label_dir = out_root / "JPEGImages", out_root / "SegmentationClass"
    if not force:
        clashes = [str(p) for stem, _, ext, _ in prepared
                   for p in (image_dir / f"{stem}{ext}", label_dir / f"{stem}.png") if p.exists()]
        if clashes:
            raise UserError(f"{len(clashes)} output file(s) already exist (e.g. {clashes[0]}); they are not "
                            "overwritten: choose another --data-root or add --force")
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    for stem, data, ext, label in prepared:
        # The original bytes are copied, not re-encoded, so the image loses no quality.
        (image_dir / f"{stem}{ext}").write_bytes(data)
        save_label(label, label_dir / f"{stem}.png")
        result.written += 1
    return result
