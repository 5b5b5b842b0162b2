"""voc_annotation.py --from-cityscapes on a tiny fake Cityscapes tree (issue 14)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from utils.data import cityscapes
from utils.data.label_map import parse_label_map
from utils.errors import UserError
from voc_annotation import main, parse_args

# cityscapesScripts helpers/labels.py: (name, id, trainId), written out here independently of the data file.
OFFICIAL = [
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9),
    ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
]
SAMPLES = {"train": ["aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000313"],
           "val": ["frankfurt_000000_000294"]}


def official_train_id(label_id: int) -> int:
    for _, ident, train_id in OFFICIAL:
        if ident == label_id:
            return train_id
    return 255


def make_tree(root: Path) -> dict[str, np.ndarray]:
    """leftImg8bit + gtFine for SAMPLES (labelIds over 0..40, so unknown ids too) and an unlabelled test city."""
    rng = np.random.default_rng(0)
    labels = {}
    for split, names in {**SAMPLES, "test": ["berlin_000000_000019"]}.items():
        for name in names:
            city = name.split("_")[0]
            image_dir = root / "leftImg8bit" / split / city
            image_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)).save(
                image_dir / f"{name}_leftImg8bit.png")
            if split == "test":
                continue
            label = rng.integers(0, 41, (24, 40), dtype=np.uint8)
            label[0, :34] = np.arange(34)  # every official id at least once
            label_dir = root / "gtFine" / split / city
            label_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(label, mode="L").save(label_dir / f"{name}_gtFine_labelIds.png")
            labels[name] = label
    return labels


def test_import_maps_links_splits_and_checks(tmp_path, capsys):
    source, out = tmp_path / "cityscapes", tmp_path / "voc"
    labels = make_tree(source)
    assert main(parse_args(["--from-cityscapes", str(source), "--data-root", str(out)])) == 0
    printed = capsys.readouterr().out
    assert "train 3, val 1" in printed and "note: leftImg8bit/test skipped" in printed
    assert "checked 4 image/label pair(s)" in printed and "19 classes" in printed and "no problems found" in printed
    lut = np.array([official_train_id(v) for v in range(256)], dtype=np.uint8)
    for name, label_ids in labels.items():
        written = np.asarray(Image.open(out / "SegmentationClass" / f"{name}.png"))
        np.testing.assert_array_equal(written, lut[label_ids])
        assert set(np.unique(written)) <= set(range(19)) | {255}
        image = out / "JPEGImages" / f"{name}.png"
        city, split = name.split("_")[0], "val" if name in SAMPLES["val"] else "train"
        original = source / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png"
        assert os.path.samefile(image, original)  # a link, not a copy
    split_dir = out / "ImageSets" / "Segmentation"
    assert (split_dir / "train.txt").read_text().split() == SAMPLES["train"]
    assert (split_dir / "val.txt").read_text().split() == SAMPLES["val"]
    assert (split_dir / "trainval.txt").read_text().split() == SAMPLES["train"] + SAMPLES["val"]
    assert not list(out.rglob("berlin*"))
    train_id_names = [name for name, _, train_id in sorted(OFFICIAL, key=lambda row: row[2]) if train_id != 255]
    assert (out / "classes.txt").read_text().split("\n")[:-1] == train_id_names
    assert train_id_names[0] == "road" and len(train_id_names) == 19


def test_table_is_a_label_map_file():
    table = parse_label_map(str(cityscapes.LABEL_MAP_FILE))
    np.testing.assert_array_equal(table.lut, [official_train_id(v) for v in range(256)])


def test_copies_where_links_are_impossible(tmp_path, monkeypatch):
    def refuse(*_args):
        raise OSError("links not supported here")

    monkeypatch.setattr(cityscapes.os, "link", refuse)
    monkeypatch.setattr(cityscapes, "_symlink", refuse)
    source, out = tmp_path / "cityscapes", tmp_path / "voc"
    make_tree(source)
    result = cityscapes.import_cityscapes(source, out)
    assert dict(result.placed) == {"copied": 4}
    image = out / "JPEGImages" / "frankfurt_000000_000294.png"
    original = source / "leftImg8bit" / "val" / "frankfurt" / "frankfurt_000000_000294_leftImg8bit.png"
    assert not image.is_symlink() and not os.path.samefile(image, original)
    assert image.read_bytes() == original.read_bytes()


def test_existing_outputs_need_force(tmp_path):
    source, out = tmp_path / "cityscapes", tmp_path / "voc"
    make_tree(source)
    cityscapes.import_cityscapes(source, out)
    with pytest.raises(UserError, match="already exist.*--force"):
        cityscapes.import_cityscapes(source, out)
    assert cityscapes.import_cityscapes(source, out, force=True).splits == {"train": 3, "val": 1}


def test_missing_label_or_tree_is_explained_and_nothing_written(tmp_path):
    source, out = tmp_path / "cityscapes", tmp_path / "voc"
    make_tree(source)
    (source / "gtFine" / "val" / "frankfurt" / "frankfurt_000000_000294_gtFine_labelIds.png").unlink()
    with pytest.raises(UserError, match="frankfurt_000000_000294_leftImg8bit.png has no label"):
        main(parse_args(["--from-cityscapes", str(source), "--data-root", str(out)]))
    assert not out.exists()
    with pytest.raises(UserError, match="not a Cityscapes folder"):
        main(parse_args(["--from-cityscapes", str(tmp_path), "--data-root", str(out)]))
    with pytest.raises(UserError, match="drop --from-labelme, --classes"):
        main(parse_args(["--from-cityscapes", str(source), "--data-root", str(out), "--num-classes", "19"]))
