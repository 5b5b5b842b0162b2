"""Tests for utils/data/dataset.py: samples, and every dataset error named by file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data.dataset import SegmentationDataset
from utils.errors import UserError


def test_dataset_samples(voc_dataset_factory):
    root = voc_dataset_factory()
    val = SegmentationDataset(root, "val", (32, 48), num_classes=3, train=False)
    train = SegmentationDataset(root, "train", 32, num_classes=3, train=True)
    assert len(val) == 2 and len(train) == 4 and val.stems == ["img_04", "img_05"]
    image, label = val[0]
    assert image.shape == (3, 32, 48) and image.dtype == torch.uint8
    assert label.shape == (32, 48) and label.dtype == torch.uint8
    assert set(label.unique().tolist()) <= {0, 1, 2, 255}
    assert val.image_path(0).name == "img_04.png" and val.label_path(0).name == "img_04.png"
    image, label = train[1]
    assert image.shape == (3, 32, 32) and set(label.unique().tolist()) <= {0, 1, 2, 255}


def test_dataset_finds_images_by_any_extension(voc_dataset_factory):
    root = voc_dataset_factory(image_ext=".bmp")
    dataset = SegmentationDataset(root, "train", 16, num_classes=3, train=False)
    assert dataset.image_path(0).suffix == ".bmp"
    assert dataset[0][0].shape == (3, 16, 16)


def test_split_naming_a_missing_image(voc_dataset_factory):
    root = voc_dataset_factory()
    (root / "ImageSets/Segmentation/train.txt").write_text("img_00\nghost\n")
    with pytest.raises(UserError, match=r"train\.txt names 'ghost'.*no image"):
        SegmentationDataset(root, "train", 32, 3, train=True)


def test_size_mismatch_names_both_sizes(voc_dataset_factory):
    pairs = {"a": (np.zeros((20, 30, 3), np.uint8), np.zeros((21, 30), np.uint8))}
    root = voc_dataset_factory(pairs=pairs, splits={"train": ["a"]})
    with pytest.raises(UserError, match=r"a\.png is 30x20.*a\.png is 30x21"):
        SegmentationDataset(root, "train", 32, 3, train=True)


def test_colour_label_is_refused_at_init(voc_dataset_factory):
    root = voc_dataset_factory()
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "SegmentationClass/img_00.png")
    with pytest.raises(UserError, match="colour"):
        SegmentationDataset(root, "train", 32, 3, train=True)


def test_truncated_image_names_the_file(voc_dataset_factory):
    root = voc_dataset_factory()
    path = root / "JPEGImages/img_01.png"
    path.write_bytes(path.read_bytes()[:-200])
    dataset = SegmentationDataset(root, "train", 32, 3, train=True)
    with pytest.raises(UserError, match=r"img_01\.png"):
        dataset[1]


def test_label_value_above_class_count(voc_dataset_factory):
    root = voc_dataset_factory()
    dataset = SegmentationDataset(root, "train", 32, num_classes=2, train=False)
    with pytest.raises(UserError, match=r"value\(s\) 2 .*only 2 classes"):
        dataset[0]


def test_empty_split(voc_dataset_factory):
    root = voc_dataset_factory()
    (root / "ImageSets/Segmentation/val.txt").write_text("\n \n")
    with pytest.raises(UserError, match=r"val\.txt is empty"):
        SegmentationDataset(root, "val", 32, 3, train=False)
