"""Tests for the synthetic demo dataset (utils/data/demo.py)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from utils.data.dataset import SegmentationDataset
from utils.data.demo import DEMO_CLASSES, make_demo_dataset
from utils.data.io import load_image, load_label, read_class_names
from utils.errors import UserError
from voc_annotation import main, parse_args


def _digest(root) -> str:
    sha = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha.update(path.relative_to(root).as_posix().encode())
        sha.update(path.read_bytes())
    return sha.hexdigest()


def test_layout_and_content(demo_dataset_root):
    root = demo_dataset_root
    assert read_class_names(root / "classes.txt") == list(DEMO_CLASSES)
    train = (root / "ImageSets/Segmentation/train.txt").read_text().split()
    val = (root / "ImageSets/Segmentation/val.txt").read_text().split()
    assert len(train) == 12 and len(val) == 4 and not set(train) & set(val)
    sizes, values = set(), set()
    for stem in train + val:
        image = load_image(root / "JPEGImages" / f"{stem}.jpg")
        label = load_label(root / "SegmentationClass" / f"{stem}.png")
        assert image.shape[:2] == label.shape
        sizes.add(label.shape)
        values |= set(np.unique(label).tolist())
    assert values == {0, 1, 2, 3, 255}  # every shape class and some ignore borders
    assert len(sizes) > 5 and all(h != w for h, w in sizes)  # varied, non-square: exercises the letterbox


def test_colour_families_separate_the_classes(demo_dataset_root):
    root = demo_dataset_root
    sums = {c: np.zeros(3) for c in (1, 2, 3)}
    for stem in (root / "ImageSets/Segmentation/train.txt").read_text().split():
        image = load_image(root / "JPEGImages" / f"{stem}.jpg").astype(float)
        label = load_label(root / "SegmentationClass" / f"{stem}.png")
        for c in sums:
            sums[c] += image[label == c].sum(axis=0)
    for cls, channel in ((1, 0), (2, 1), (3, 2)):  # reddish circles, greenish rectangles, bluish triangles
        assert int(np.argmax(sums[cls])) == channel


def test_deterministic_bytes_and_seed_matters(tmp_path):
    first = make_demo_dataset(tmp_path / "a", seed=3, num_train=3, num_val=1)
    second = make_demo_dataset(tmp_path / "b", seed=3, num_train=3, num_val=1)
    other = make_demo_dataset(tmp_path / "c", seed=4, num_train=3, num_val=1)
    assert _digest(first) == _digest(second) != _digest(other)
    stamp = (first / "JPEGImages/demo_0000.jpg").stat().st_mtime_ns
    make_demo_dataset(first, seed=3, num_train=3, num_val=1)  # already there: nothing rewritten
    assert (first / "JPEGImages/demo_0000.jpg").stat().st_mtime_ns == stamp


def test_never_writes_over_other_data(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "precious.txt").write_text("keep")
    with pytest.raises(UserError, match="not a demo dataset"):
        make_demo_dataset(tmp_path / "mine", num_train=2, num_val=1)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["precious.txt"]


def test_loads_and_passes_the_checks(demo_dataset_root, capsys):
    dataset = SegmentationDataset(demo_dataset_root, "train", (64, 96), len(DEMO_CLASSES), train=True)
    image, label = dataset[0]
    assert image.shape == (3, 64, 96) and label.shape == (64, 96)
    args = ["--data-root", str(demo_dataset_root), "--classes", str(demo_dataset_root / "classes.txt"),
            "--check-only"]
    assert main(parse_args(args)) == 0
    assert "triangle" in capsys.readouterr().out


def test_interrupted_build_leaves_nothing_and_is_rebuilt(tmp_path, monkeypatch):
    from utils.data import demo as demo_data

    written = []
    real_write = demo_data._write_sample

    def interrupted(root, stem, image, label):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(stem)
        real_write(root, stem, image, label)

    monkeypatch.setattr(demo_data, "_write_sample", interrupted)
    with pytest.raises(KeyboardInterrupt):
        make_demo_dataset(tmp_path / "demo", seed=1, num_train=3, num_val=1)
    assert list(tmp_path.iterdir()) == []  # neither a half-written demo folder nor a leftover partial one
    monkeypatch.undo()
    root = make_demo_dataset(tmp_path / "demo", seed=1, num_train=3, num_val=1)
    assert _digest(root) == _digest(make_demo_dataset(tmp_path / "clean", seed=1, num_train=3, num_val=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clean", "demo"]


def test_other_parameters_replace_an_old_demo_folder(tmp_path):
    root = make_demo_dataset(tmp_path / "demo", seed=1, num_train=3, num_val=1)
    make_demo_dataset(root, seed=1, num_train=2, num_val=1)
    assert _digest(root) == _digest(make_demo_dataset(tmp_path / "fresh", seed=1, num_train=2, num_val=1))
    assert not (root / "JPEGImages/demo_0003.jpg").exists()  # nothing left over from the larger set
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo", "fresh"]
