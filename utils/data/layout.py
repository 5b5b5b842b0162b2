"""The VOC folder layout of a data root: checks, split files and the image index.

A data root holds ``JPEGImages/`` (any of :data:`~utils.data.io.IMAGE_EXTENSIONS`, found by
stem), ``SegmentationClass/`` (one label PNG per image) and ``ImageSets/Segmentation/<split>.txt``.
Every missing piece is a :class:`UserError` that shows the expected tree.
"""

from __future__ import annotations

import os
from pathlib import Path

from utils.data.io import IMAGE_EXTENSIONS
from utils.errors import UserError

LAYOUT_TREE = """\
<data root>/                      (default VOCdevkit/VOC2007)
    JPEGImages/                   images: <name>.jpg (or .jpeg .png .bmp .tif .tiff .webp)
    SegmentationClass/            labels: <name>.png, one channel, pixel = class index, 255 = ignore
    ImageSets/Segmentation/       train.txt, val.txt: one <name> per line (voc_annotation.py writes them)"""


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
