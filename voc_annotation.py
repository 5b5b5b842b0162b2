"""Write the train/val split files of a VOC-layout dataset and check every image/label pair.

Examples::

    python voc_annotation.py                                   # VOCdevkit/VOC2007, 21 VOC classes
    python voc_annotation.py --data-root data/mine --classes data/mine/classes.txt
    python voc_annotation.py --data-root data/mine --num-classes 2 --check-only
    python voc_annotation.py --data-root data/mine --fix-binary  # 0/255 masks -> SegmentationClass_fixed/
    python voc_annotation.py --data-root data/mine --num-classes 2 --label-map 255:1  # or read them remapped
    python voc_annotation.py --data-root data/mine --convert-rgb # VOC colours -> SegmentationClass_converted/
    python voc_annotation.py --from-labelme json_dir --data-root data/mine --classes classes.txt
    python voc_annotation.py --from-cityscapes ~/cityscapes --data-root VOCdevkit/cityscapes
    python voc_annotation.py --from-rasters scenes/images scenes/labels --tile 512 --stride 256 --data-root data/tiles

Exit status: 0 when everything is fine, 1 when a problem was found, 2 for unusable input.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from utils.data.checks import check_dataset, convert_rgb_labels, fix_binary_labels, format_class_table, write_splits
from utils.data.cityscapes import cityscapes_class_names, import_cityscapes
from utils.data.io import VOC_CLASSES, default_class_names, read_class_names
from utils.data.label_map import parse_label_map
from utils.data.labelme import convert_labelme
from utils.data.layout import check_layout
from utils.data.tiles import TileOptions, tile_scenes
from utils.errors import UserError, run_cli


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default="VOCdevkit/VOC2007",
                        help="folder holding JPEGImages/, SegmentationClass/, ImageSets/Segmentation/")
    parser.add_argument("--classes", default=None, help="text file with one class name per line, background first")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="number of classes including background (default: from --classes, else 21)")
    parser.add_argument("--trainval-percent", type=float, default=1.0,
                        help="share of the labelled images used for train+val; the rest go to test.txt")
    parser.add_argument("--train-percent", type=float, default=0.9, help="share of train+val used for training")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random split")
    parser.add_argument("--force", action="store_true",
                        help="rewrite existing split files / write into existing output folders")
    parser.add_argument("--check-only", action="store_true", help="only check; do not write split files")
    parser.add_argument("--label-map", metavar="SRC:DST,...|FILE",
                        help="check the labels as train.py --label-map will read them, e.g. 255:1 for 0/255 "
                        "masks or 3:1,*:0 (files are never rewritten)")
    parser.add_argument("--fix-binary", action="store_true",
                        help="write 0/255 masks as 0/1 labels to SegmentationClass_fixed/ (originals untouched)")
    parser.add_argument("--convert-rgb", action="store_true",
                        help="write VOC-palette colour labels as index labels to SegmentationClass_converted/")
    parser.add_argument("--from-labelme", default=None, metavar="DIR",
                        help="first import a folder of labelme JSON files into --data-root (needs the class list)")
    parser.add_argument("--from-cityscapes", default=None, metavar="ROOT",
                        help="first import Cityscapes (leftImg8bit/ and gtFine/ train and val) into --data-root: "
                        "images linked, labelIds mapped to the 19 trainIds, splits and classes.txt written")
    parser.add_argument("--from-rasters", nargs=2, default=None, metavar=("IMAGES", "LABELS"),
                        help="first cut the GeoTIFF scenes of IMAGES and their label scenes (same names) into "
                        "tiles in --data-root; split by scene (or by a block of each scene when there are "
                        "fewer than 5), val share 1 - --train-percent")
    parser.add_argument("--tile", type=int, default=512, help="--from-rasters: tile side in pixels [%(default)s]")
    parser.add_argument("--stride", type=int, default=None,
                        help="--from-rasters: step between train tiles [the tile side]; val tiles never overlap")
    return parser.parse_args(argv)


def import_from_rasters(args: argparse.Namespace, root: Path) -> None:
    """``--from-rasters``: cut the scenes into tiles and split files in ``root``, and say what was written."""
    if args.from_labelme or args.from_cityscapes or args.check_only:
        raise UserError("--from-rasters writes its own tiles and splits: drop --from-labelme, --from-cityscapes "
                        "and --check-only")
    try:
        options = TileOptions(args.tile, args.stride, round(1 - args.train_percent, 6), args.seed, args.force)
    except ValueError as exc:
        flag = {"tile": "--tile", "stride": "--stride"}.get(str(exc).split()[0], "--train-percent")
        raise UserError(f"{flag}: {exc}") from None
    result = tile_scenes(*args.from_rasters, root, options)
    how = ("whole scenes" if result.split_by == "scene" else
           "a block of rows at the bottom of each scene (fewer than 5 scenes)")
    print(f"cut {result.scenes} scene(s) into {result.tiles['train']} train and {result.tiles['val']} val tile(s) "
          f"of {args.tile} px in {root}; val is {how}; skipped {result.skipped_nodata} all-nodata and "
          f"{result.skipped_ignored} all-ignored tile(s)")
    for note in result.notes:
        print(f"note: {note}")


def resolve_classes(classes: str | None, num_classes: int | None) -> list[str]:
    """Class names from --classes, else the VOC names (21), else generic names for --num-classes."""
    if classes is not None:
        names = read_class_names(classes)
        if num_classes is not None and num_classes != len(names):
            raise UserError(f"--num-classes {num_classes} disagrees with {classes}, which names {len(names)} "
                            "classes; drop --num-classes or fix the file")
        return names
    if num_classes is None:
        return list(VOC_CLASSES)
    if not 2 <= num_classes <= 255:
        raise UserError(f"--num-classes must be between 2 and 255 (background included), got {num_classes}")
    return default_class_names(num_classes)


def import_from_cityscapes(args: argparse.Namespace, root: Path) -> list[str]:
    """``--from-cityscapes``: import into ``root``, report what was written; returns the 19 class names."""
    if args.from_labelme or args.classes or args.num_classes or args.check_only:
        raise UserError("--from-cityscapes writes its own images, labels, 19 classes and splits: drop "
                        "--from-labelme, --classes, --num-classes and --check-only")
    result = import_cityscapes(args.from_cityscapes, root, force=args.force)
    splits = ", ".join(f"{split} {count}" for split, count in result.splits.items())
    placed = ", ".join(f"{count} {how}" for how, count in result.placed.items())
    print(f"imported Cityscapes from {args.from_cityscapes} into {root}: {splits} (images {placed}); "
          f"class names in {root / 'classes.txt'}")
    for note in result.notes:
        print(f"note: {note}")
    return cityscapes_class_names()


def main(args: argparse.Namespace) -> int:
    """Import (optional), write the splits, check all pairs, print the report and apply the requested fix."""
    root = Path(args.data_root)
    if args.from_cityscapes:
        class_names = import_from_cityscapes(args, root)
    else:
        class_names = resolve_classes(args.classes, args.num_classes)
    label_map = parse_label_map(args.label_map)
    if args.from_rasters:
        import_from_rasters(args, root)
    if args.from_labelme:
        if args.classes is None:
            raise UserError("--from-labelme needs --classes FILE (one class name per line, background first) "
                            "so that shape labels can be turned into class indices")
        result = convert_labelme(args.from_labelme, root, class_names, force=args.force)
        print(f"imported {result.written} labelme file(s) from {args.from_labelme} into {root}")
        for note in result.notes:
            print(f"note: {note}")
    check_layout(root)

    if args.from_cityscapes:
        print(f"wrote {root / 'ImageSets' / 'Segmentation'} from Cityscapes' own train and val folders")
    elif args.from_rasters:
        print(f"wrote {root / 'ImageSets' / 'Segmentation'}: train.txt, val.txt, trainval.txt")
    elif not args.check_only:
        counts = write_splits(root, args.trainval_percent, args.train_percent, args.seed, force=args.force)
        split_dir = root / "ImageSets" / "Segmentation"
        if counts is None:
            print(f"kept the existing split files in {split_dir} (add --force to rewrite them)")
        else:
            print(f"wrote {split_dir}: " + ", ".join(f"{name}.txt {n}" for name, n in counts.items()))

    report = check_dataset(root, len(class_names), label_map)
    print(f"\nchecked {report.pairs} image/label pair(s) in {root}, {len(class_names)} classes")
    print(format_class_table(report, class_names))
    absent = [name for i, name in enumerate(class_names) if report.image_counts[i] == 0]
    if absent and report.pairs:
        print(f"note: no pixel of class(es) {', '.join(absent)}; check the class list if that is unexpected")

    resolved: set[str] = set()
    if args.fix_binary:
        if not report.is_binary:
            raise UserError("--fix-binary only applies when the labels hold just the values 0 and 255; "
                            "yours do not (see the table above)")
        out, count = fix_binary_labels(root, force=args.force)
        resolved.add("binary")
        print(f"\nwrote {count} corrected label(s) (255 -> 1) to {out}; the originals are untouched.\n"
              f"To train on them: rename {root / 'SegmentationClass'} to SegmentationClass_original, rename "
              f"{out.name} to SegmentationClass, then rerun voc_annotation.py with --num-classes 2 "
              "(or a --classes file with your two names).")
    if args.convert_rgb:
        if not report.rgb_labels:
            raise UserError("--convert-rgb: no colour (RGB) labels found; nothing to convert")
        out, count = convert_rgb_labels(root, force=args.force)
        resolved.add("rgb-labels")
        print(f"\nwrote {count} index label(s) to {out}; the originals are untouched.\n"
              f"To train on them: rename {root / 'SegmentationClass'} to SegmentationClass_original, rename "
              f"{out.name} to SegmentationClass, then rerun voc_annotation.py.")

    for finding in report.findings:
        tag = "note" if not finding.problem else ("fixed" if finding.kind in resolved else "problem")
        print(f"\n{tag}: {finding.message}")
    open_problems = [f for f in report.problems if f.kind not in resolved]
    if open_problems:
        print(f"\n{len(open_problems)} problem(s) found; fix them before training.")
        return 1
    print("\nno problems found.")
    return 0


if __name__ == "__main__":
    run_cli(lambda argv: main(parse_args(argv)))
