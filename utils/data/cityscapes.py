"""Import Cityscapes (fine annotations) into the VOC layout: ``voc_annotation.py --from-cityscapes ROOT``.

Reads ``leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png`` and
``gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png``, and writes under the data root:
``JPEGImages/<name>.png`` (a hard link to the original, else a symbolic link, else a copy),
``SegmentationClass/<name>.png`` (labelIds mapped to the 19 trainIds, everything else 255, by
the table in ``label_maps/cityscapes.txt``, which is also a ``--label-map`` file), the
``train``/``val``/``trainval`` split files from Cityscapes' own folders, and ``classes.txt``
(the 19 trainId names, ``road`` first). The test split has no public labels and is skipped.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from utils.data.io import load_label, read_class_names, save_label
from utils.data.label_map import LabelMap, read_label_map_file
from utils.errors import UserError

LABEL_MAPS = Path(__file__).resolve().parent / "label_maps"
LABEL_MAP_FILE = LABEL_MAPS / "cityscapes.txt"
CLASSES_FILE = LABEL_MAPS / "cityscapes_classes.txt"
SPLITS = ("train", "val")
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
EXPECTED_TREE = """ROOT/
├── leftImg8bit/{train,val}/<city>/<name>_leftImg8bit.png
└── gtFine/{train,val}/<city>/<name>_gtFine_labelIds.png"""


@dataclass
class CityscapesResult:
    """What :func:`import_cityscapes` wrote: samples per split, how images were placed, notes."""

    splits: dict[str, int] = field(default_factory=dict)
    placed: Counter = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


def cityscapes_class_names() -> list[str]:
    """The 19 Cityscapes training classes in trainId order."""
    return read_class_names(CLASSES_FILE)


def _find_pairs(root: Path, split: str) -> list[tuple[str, Path, Path]]:
    """(name, image, label) of one split, sorted by name; UserError naming an image without its label."""
    pairs = []
    for image in sorted((root / "leftImg8bit" / split).glob(f"*/*{IMAGE_SUFFIX}")):
        name = image.name[:-len(IMAGE_SUFFIX)]
        label = root / "gtFine" / split / image.parent.name / f"{name}{LABEL_SUFFIX}"
        if not label.is_file():
            raise UserError(f"{image} has no label {label}: download gtFine_trainvaltest.zip and unpack it into "
                            f"{root} next to leftImg8bit/")
        pairs.append((name, image, label))
    return pairs


def _symlink(source: Path, target: Path) -> None:
    target.symlink_to(source.resolve())


def place_image(source: Path, target: Path) -> str:
    """Put ``source`` at ``target``: a hard link, else a symbolic link, else a copy; returns which."""
    for place, how in ((os.link, "hard-linked"), (_symlink, "symlinked")):
        try:
            place(source, target)
            return how
        except OSError:
            continue  # another filesystem, or links not allowed here: try the next way
    shutil.copy2(source, target)
    return "copied"


def _write_label(source: Path, target: Path, table: LabelMap) -> None:
    save_label(table.apply(load_label(source)), target)


def import_cityscapes(source: str | os.PathLike, out_root: str | os.PathLike, force: bool = False,
                      workers: int | None = None) -> CityscapesResult:
    """Import the train and val splits of the Cityscapes tree at ``source`` into ``out_root`` (see module doc).

    Nothing is written before every image is known to have its label; existing outputs are only
    replaced with ``force``. Labels are converted in ``workers`` threads (default: the CPU count).
    """
    source, out_root = Path(source), Path(out_root)
    if not (source / "leftImg8bit").is_dir() or not (source / "gtFine").is_dir():
        raise UserError(f"{source} is not a Cityscapes folder; --from-cityscapes expects:\n{EXPECTED_TREE}")
    result = CityscapesResult()
    splits = {split: _find_pairs(source, split) for split in SPLITS}
    if not any(splits.values()):
        raise UserError(f"no *{IMAGE_SUFFIX} images in {source}/leftImg8bit/train or val; expected:\n{EXPECTED_TREE}")
    if (source / "leftImg8bit" / "test").is_dir():
        result.notes.append("leftImg8bit/test skipped: Cityscapes publishes no labels for it (its results are "
                            "scored by the benchmark server)")
    pairs = [pair for split in SPLITS for pair in splits[split]]
    image_dir, label_dir = out_root / "JPEGImages", out_root / "SegmentationClass"
    split_dir = out_root / "ImageSets" / "Segmentation"
    targets = [p for name, _, _ in pairs for p in (image_dir / f"{name}.png", label_dir / f"{name}.png")]
    targets += [split_dir / f"{split}.txt" for split in (*SPLITS, "trainval")] + [out_root / "classes.txt"]
    clashes = [str(p) for p in targets if p.exists() or p.is_symlink()]
    if clashes and not force:
        raise UserError(f"{len(clashes)} output file(s) already exist (e.g. {clashes[0]}); they are not "
                        "overwritten: choose another --data-root or add --force")
    table = read_label_map_file(LABEL_MAP_FILE)
    for folder in (image_dir, label_dir, split_dir):
        folder.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool, \
            tqdm(total=len(pairs), unit="img", desc="cityscapes", file=sys.stderr, disable=len(pairs) < 50) as bar:
        jobs = [pool.submit(_write_label, label, label_dir / f"{name}.png", table) for name, _, label in pairs]
        for name, image, _ in pairs:
            target = image_dir / f"{name}.png"
            if target.exists() or target.is_symlink():
                target.unlink()
            result.placed[place_image(image, target)] += 1
        for job in jobs:
            job.result()
            bar.update(1)
    for split in SPLITS:
        (split_dir / f"{split}.txt").write_text("".join(f"{name}\n" for name, _, _ in splits[split]))
        result.splits[split] = len(splits[split])
    (split_dir / "trainval.txt").write_text("".join(f"{name}\n" for name, _, _ in pairs))
    (out_root / "classes.txt").write_text("\n".join(cityscapes_class_names()) + "\n", encoding="utf-8")
    return result
