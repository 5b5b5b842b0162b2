"""Split writing and label checks behind ``voc_annotation.py``.

Most failed trainings are data mistakes: labels saved as 0/255 masks, as RGB colour pictures,
with stray values, or with a different size than their image. :func:`check_dataset` reads
every pair once and reports each of those with a message a newcomer can act on, plus the
per-class pixel statistics. The fixes (:func:`fix_binary_labels`, :func:`convert_rgb_labels`)
always write to a new folder and never touch the originals.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.data.io import IGNORE_INDEX, IMAGE_EXTENSIONS, LABEL_MODES, load_label, save_label, voc_palette
from utils.data.label_map import LabelMap
from utils.data.layout import check_layout, index_images, parse_split_file, size_mismatch_message
from utils.data.raster import read_image
from utils.errors import UserError

SPLIT_NAMES = ("trainval", "train", "val", "test")
MAX_LISTED = 5


@dataclass
class Finding:
    """One result of the checks: ``problem`` findings make voc_annotation.py exit non-zero, notes do not."""

    kind: str
    message: str
    problem: bool = True


@dataclass
class CheckReport:
    """Everything :func:`check_dataset` learnt: findings, and per-value pixel and image counts (256 values)."""

    root: Path
    num_classes: int
    findings: list[Finding] = field(default_factory=list)
    pixel_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    image_counts: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    value_files: dict[int, list[str]] = field(default_factory=dict)
    rgb_labels: list[Path] = field(default_factory=list)
    rgb_colours: set[tuple[int, int, int]] = field(default_factory=set)
    pairs: int = 0

    @property
    def problems(self) -> list[Finding]:
        """The findings that are real problems (not notes)."""
        return [f for f in self.findings if f.problem]

    @property
    def is_binary(self) -> bool:
        """True when the (single-channel) labels hold exactly the values 0 and 255."""
        present = set(np.flatnonzero(self.pixel_counts).tolist())
        return present == {0, IGNORE_INDEX}

    def add(self, kind: str, message: str, problem: bool = True) -> None:
        """Record a finding."""
        self.findings.append(Finding(kind, message, problem))


def _listing(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """'a, b, c' or 'a, b, c and 7 more' for messages that name files."""
    shown = ", ".join(str(n) for n in names[:limit])
    return shown if len(names) <= limit else f"{shown} and {len(names) - limit} more"


def label_stems(root: Path) -> dict[str, Path]:
    """Map stem -> path of every ``.png`` in ``SegmentationClass``."""
    folder = root / "SegmentationClass"
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() == ".png"}


def write_splits(
    root: str | os.PathLike,
    trainval_percent: float = 1.0,
    train_percent: float = 0.9,
    seed: int = 0,
    force: bool = False,
) -> dict[str, int] | None:
    """Write ``ImageSets/Segmentation/{trainval,train,val,test}.txt`` from the stems that have a label and an image.

    As in the original release, ``trainval_percent`` of the pairs go to trainval (the rest to
    test) and ``train_percent`` of trainval to train (the rest to val), drawn with ``seed``.
    Existing split files are kept unless ``force``; returns the counts written, or None if kept.
    """
    root = Path(root)
    for name, value in (("--trainval-percent", trainval_percent), ("--train-percent", train_percent)):
        if not 0.0 < value <= 1.0:
            raise UserError(f"{name} must be in (0, 1], got {value}")
    split_dir = root / "ImageSets" / "Segmentation"
    if not force and any((split_dir / f"{name}.txt").exists() for name in SPLIT_NAMES):
        return None
    images = index_images(root / "JPEGImages")
    stems = sorted(stem for stem in label_stems(root) if stem in images)
    if not stems:
        raise UserError(f"no label in {root / 'SegmentationClass'} has a matching image in "
                        f"{root / 'JPEGImages'} (same file name, image extension one of "
                        f"{', '.join(IMAGE_EXTENSIONS)}): nothing to split")
    rng = random.Random(seed)
    trainval = set(rng.sample(stems, int(len(stems) * trainval_percent)))
    train = set(rng.sample(sorted(trainval), int(len(trainval) * train_percent)))
    members = {
        "trainval": trainval,
        "train": train,
        "val": trainval - train,
        "test": set(stems) - trainval,
    }
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, chosen in members.items():
        (split_dir / f"{name}.txt").write_text("".join(f"{s}\n" for s in stems if s in chosen))
    return {name: len(chosen) for name, chosen in members.items()}


def _rgb_colours(image: Image.Image) -> set[tuple[int, int, int]]:
    """Distinct colours of an RGB(A) label (alpha ignored)."""
    array = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(np.uint32)
    packed = np.unique(array[:, 0] << 16 | array[:, 1] << 8 | array[:, 2])
    return {(int(p >> 16), int(p >> 8 & 255), int(p & 255)) for p in packed[:4096]}


def _palette_lookup() -> dict[tuple[int, int, int], int]:
    palette = voc_palette()
    return {tuple(palette[3 * i:3 * i + 3]): i for i in range(256)}


def check_dataset(root: str | os.PathLike, num_classes: int, label_map: LabelMap | None = None) -> CheckReport:
    """Check every image/label pair of a VOC-layout data root and gather per-class statistics.

    Findings: labels without images (problem), images without labels (note), split files naming
    missing files, unreadable files, size mismatches, labels that are not single-channel 8-bit
    (RGB colour labels get their own explanation), values in [num_classes, 254], and 0/255
    binary masks. ``label_map`` remaps label values as they are read, as training does. Nothing is written.
    """
    root = Path(root)
    check_layout(root)
    report = CheckReport(root=root, num_classes=num_classes)
    labels = label_stems(root)
    images = index_images(root / "JPEGImages")
    not_png = sorted(p.name for p in (root / "SegmentationClass").iterdir()
                     if p.is_file() and p.suffix.lower() != ".png" and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not_png:
        report.add("label-not-png", f"{len(not_png)} file(s) in SegmentationClass are not PNG ({_listing(not_png)}); "
                   "labels must be PNG, because JPEG compression changes the class values. Re-save them as PNG")
    if not labels:
        report.add("no-labels", f"no .png label in {root / 'SegmentationClass'}; put one label PNG per image "
                   "there, with the image's file name")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        report.add("label-without-image", f"{len(orphans)} label(s) have no image of the same name in JPEGImages "
                   f"({_listing(orphans)}); add the images (any of {', '.join(IMAGE_EXTENSIONS)}) or remove "
                   "these labels")
    unlabelled = sorted(set(images) - set(labels))
    if unlabelled:
        report.add("image-without-label", f"{len(unlabelled)} image(s) have no label in SegmentationClass "
                   f"({_listing(unlabelled)}); they are left out of the split files and not trained on",
                   problem=False)
    split_dir = root / "ImageSets" / "Segmentation"
    for name in SPLIT_NAMES:
        split_file = split_dir / f"{name}.txt"
        if not split_file.is_file():
            continue
        listed = parse_split_file(split_file)
        missing = [s for s in listed if s not in labels or s not in images]
        if missing:
            report.add("split-missing", f"{split_file} names {len(missing)} sample(s) without an image or a "
                       f"label ({_listing(missing)}); rerun voc_annotation.py with --force to rewrite the splits")
        elif name in ("train", "val") and not listed:
            report.add("split-empty", f"{split_file} is empty; rerun voc_annotation.py with --force "
                       "(and check --trainval-percent / --train-percent)")

    bad_mode: list[str] = []
    for stem in sorted(set(labels) & set(images)):
        label_path, image_path = labels[stem], images[stem]
        try:
            with Image.open(label_path) as label_image:
                label_image.load()
                mode = label_image.mode
                if mode in ("RGB", "RGBA"):
                    report.rgb_labels.append(label_path)
                    if len(report.rgb_colours) < 4096:
                        report.rgb_colours |= _rgb_colours(label_image)
                    label_size = label_image.size
                    label = None
                elif mode in LABEL_MODES:
                    label = np.asarray(label_image).astype(np.uint8, copy=False)
                    if label_map is not None:
                        label = label_map.apply(label)
                    label_size = label_image.size
                else:
                    bad_mode.append(f"{label_path.name} ({mode})")
                    continue
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            report.add("unreadable-label", f"cannot read label {label_path} ({exc}); replace it or delete it "
                       "and its image")
            continue
        try:
            image = read_image(image_path)
        except UserError as exc:
            report.add("unreadable-image", str(exc))
            continue
        image_size = (image.shape[1], image.shape[0])
        if image_size != label_size:
            report.add("size-mismatch", size_mismatch_message(
                image_path, image_size, label_path, label_size,
                "a label must have exactly its image's size (do not resize or crop one without the other)"))
            continue
        report.pairs += 1
        if label is None:
            continue
        counts = np.bincount(label.ravel(), minlength=256)
        report.pixel_counts += counts
        present = np.flatnonzero(counts)
        report.image_counts[present] += 1
        for value in present[(present >= num_classes) & (present != IGNORE_INDEX)]:
            report.value_files.setdefault(int(value), []).append(label_path.name)

    if bad_mode:
        report.add("label-mode", f"{len(bad_mode)} label(s) are not 8-bit single-channel images "
                   f"({_listing(bad_mode)}); save labels as 8-bit grey or palette PNGs holding class indices")
    if report.rgb_labels:
        report.add("rgb-labels", _rgb_message(report))
    if report.is_binary and num_classes >= 2:
        report.add("binary", "your labels hold only the values 0 and 255. That is how binary masks are usually "
                   "saved (black background, white object), but here a label pixel must hold the CLASS INDEX: "
                   "0 = background, 1 = first object class, ...; 255 means 'ignore this pixel', so the "
                   "objects would never be learnt. Either train a binary model on them as they are, with "
                   "train.py --task binary --label-map 255:1 (labels are remapped as they are read), or rerun "
                   "with --fix-binary to write corrected labels (255 -> 1) to SegmentationClass_fixed/ (your "
                   "originals stay untouched), then train with 2 classes")
    elif report.value_files:
        report.add("out-of-range", _out_of_range_message(report))
    return report


def _out_of_range_message(report: CheckReport) -> str:
    c = report.num_classes
    lines = [f"labels hold values between {c} and 254, but with {c} classes the valid values are "
             f"0..{c - 1} (class indices) and 255 (ignore):"]
    for value in sorted(report.value_files)[:10]:
        files = report.value_files[value]
        lines.append(f"  value {value}: {len(files)} file(s): {_listing(files)}")
    if len(report.value_files) > 10:
        lines.append(f"  ... and {len(report.value_files) - 10} more values")
    hint = ("Set --num-classes (or --classes) to the real class count, or fix these labels.")
    if len(report.value_files) > 20:
        hint = ("So many different values usually means the labels are grey pictures or anti-aliased/"
                "resized masks rather than class indices: re-export them with one exact value per class "
                "(and resize labels only with nearest-neighbour).")
    lines.append(hint)
    return "\n".join(lines)


def _rgb_message(report: CheckReport) -> str:
    names = [p.name for p in report.rgb_labels]
    text = (f"{len(names)} label(s) are colour (RGB) images ({_listing(names)}). Labels must be single-channel "
            "PNGs in which each pixel holds its class index (0 = background, 1 = first class, ..., "
            "255 = ignore); a coloured picture of the classes cannot be trained on. ")
    lookup = _palette_lookup()
    colours = report.rgb_colours
    if all(r == g == b for r, g, b in colours):
        return text + ("Their pixels are grey (R = G = B): rerun with --convert-rgb to write them as "
                       "single-channel labels to SegmentationClass_converted/.")
    unknown = sorted(c for c in colours if c not in lookup)
    if not unknown:
        return text + ("All their colours are VOC palette colours, so they can be converted: rerun with "
                       "--convert-rgb to write index labels to SegmentationClass_converted/ (originals untouched).")
    shown = ", ".join(str(c) for c in unknown[:6])
    return text + (f"Some colours are not VOC palette colours (e.g. {shown}), so they cannot be converted "
                   "automatically: map each colour to its class index with your own table.")


def format_class_table(report: CheckReport, class_names: Sequence[str]) -> str:
    """Per-class pixel count, share of all pixels and number of images, with names; plus ignore and stray values."""
    total = int(report.pixel_counts.sum())
    width = max([len("class"), len("(ignore)"), *(len(n) for n in class_names)])
    rows = [f"{'value':>5}  {'class':<{width}}  {'pixels':>13}  {'share':>7}  {'images':>6}"]

    def row(value: int, name: str) -> str:
        pixels = int(report.pixel_counts[value])
        share = 100.0 * pixels / total if total else 0.0
        return f"{value:>5}  {name:<{width}}  {pixels:>13,}  {share:>6.2f}%  {int(report.image_counts[value]):>6}"

    for index, name in enumerate(class_names):
        rows.append(row(index, name))
    for value in sorted(report.value_files):
        rows.append(row(value, "(out of range)"))
    rows.append(row(IGNORE_INDEX, "(ignore)"))
    return "\n".join(rows)


def _prepare_out_dir(out_dir: Path, force: bool, sources: Path) -> None:
    if out_dir.resolve() == sources.resolve():
        raise UserError(f"output folder {out_dir} is the label folder itself; originals are never overwritten")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise UserError(f"{out_dir} already exists and is not empty; remove it or add --force to write into it")
    out_dir.mkdir(parents=True, exist_ok=True)


def fix_binary_labels(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                      force: bool = False) -> tuple[Path, int]:
    """Write 0/255 binary masks as 0/1 class-index labels to ``out_dir`` (default ``SegmentationClass_fixed``).

    The originals are only read. Raises :class:`UserError` if a label holds other values.
    Returns ``(out_dir, number of labels written)``.
    """
    root = Path(root)
    sources = root / "SegmentationClass"
    out = Path(out_dir) if out_dir is not None else root / "SegmentationClass_fixed"
    labels = label_stems(root)
    arrays = {}
    for stem, path in labels.items():
        label = load_label(path)
        other = np.setdiff1d(np.unique(label), [0, IGNORE_INDEX])
        if other.size:
            raise UserError(f"label {path} holds values other than 0 and 255 ({_listing(other.tolist())}); "
                            "--fix-binary only applies to binary 0/255 masks")
        arrays[stem] = label
    _prepare_out_dir(out, force, sources)
    for stem, label in arrays.items():
        save_label(np.where(label == IGNORE_INDEX, 1, 0).astype(np.uint8), out / f"{stem}.png")
    return out, len(arrays)


def convert_rgb_labels(root: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                       force: bool = False) -> tuple[Path, int]:
    """Write index labels for colour labels to ``out_dir`` (default ``SegmentationClass_converted``).

    VOC palette colours become their palette index (black 0, cream (224, 224, 192) 255); grey
    RGB labels (R = G = B) keep their grey value; single-channel labels are copied as they are,
    so the new folder is complete. An unknown colour raises :class:`UserError` naming the file.
    """
    root = Path(root)
    sources = root / "SegmentationClass"
    out = Path(out_dir) if out_dir is not None else root / "SegmentationClass_converted"
    palette = np.asarray(voc_palette(), np.uint32).reshape(256, 3)
    keys = palette[:, 0] << 16 | palette[:, 1] << 8 | palette[:, 2]
    order = np.argsort(keys)
    sorted_keys = keys[order]
    converted = {}
    for stem, path in label_stems(root).items():
        try:
            with Image.open(path) as image:
                image.load()
                colour = image.mode in ("RGB", "RGBA")
                rgb = np.asarray(image.convert("RGB")) if colour else None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise UserError(f"cannot read label {path} ({exc}); replace it or delete it and its image, "
                            "then rerun --convert-rgb") from None
        if rgb is None:
            converted[stem] = load_label(path)
            continue
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            converted[stem] = rgb[..., 0].copy()
            continue
        flat = rgb.reshape(-1, 3).astype(np.uint32)
        packed = flat[:, 0] << 16 | flat[:, 1] << 8 | flat[:, 2]
        pos = np.clip(np.searchsorted(sorted_keys, packed), 0, 255)
        known = sorted_keys[pos] == packed
        if not known.all():
            bad = np.unique(packed[~known])[:5]
            colours = ", ".join(str((int(p >> 16), int(p >> 8 & 255), int(p & 255))) for p in bad)
            raise UserError(f"label {path} holds colours that are not in the VOC palette ({colours}); "
                            "convert it with your own colour-to-class table")
        converted[stem] = order[pos].astype(np.uint8).reshape(rgb.shape[:2])
    _prepare_out_dir(out, force, sources)
    for stem, label in converted.items():
        save_label(label, out / f"{stem}.png")
    return out, len(converted)
