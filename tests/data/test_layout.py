"""Tests for utils/data/layout.py: the expected tree in errors, split files."""

from __future__ import annotations

import pytest

from utils.data.dataset import SegmentationDataset
from utils.data.layout import parse_split_file, read_split
from utils.errors import UserError


def test_missing_folder_shows_the_expected_tree(tmp_path):
    with pytest.raises(UserError) as info:
        SegmentationDataset(tmp_path / "nowhere", "train", 32, 3, train=True)
    message = str(info.value)
    assert "nowhere" in message and "JPEGImages/" in message and "SegmentationClass/" in message
    assert "ImageSets/Segmentation/" in message


def test_parse_split_file_takes_first_token_and_drops_image_extensions(tmp_path):
    split = tmp_path / "ImageSets" / "Segmentation" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("\ufeffa.png\n\n  b 1\nc.JPG -1\nd.json\n", encoding="utf-8")
    assert parse_split_file(split) == ["a", "b", "c", "d.json"]
    assert read_split(tmp_path, "train") == ["a", "b", "c", "d.json"]
