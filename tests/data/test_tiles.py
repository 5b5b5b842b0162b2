"""voc_annotation.py --from-rasters: tile counts, splits without leaks, val without overlap, georeferenced tiles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.windows import Window

from utils.data.io import load_label
from utils.data.synthetic_rasters import make_scene, write_scene_pair
from utils.data.tiles import TileOptions, positions, tile_scenes
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def scenes(root: Path, count: int, height: int, width: int, seed: int = 0) -> tuple[Path, Path]:
    """``count`` 4-band uint16 scene pairs, each at its own place on the ground."""
    rng = np.random.default_rng(seed)
    for index in range(count):
        image, label = make_scene(rng, height, width)
        write_scene_pair(root / "images" / f"s{index}.tif", root / "labels" / f"s{index}.tif", image, label,
                         origin=(500000.0 + 10000 * index, 5000000.0))
    return root / "images", root / "labels"


def split_stems(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


def window_of(stem: str, tile: int) -> tuple[str, int, int]:
    scene, row, col = stem.rsplit("_", 2)
    return scene, int(row), int(col)


def test_positions_step_by_the_stride_and_touch_the_edge():
    assert positions(100, 32, 32, to_edge=False) == [0, 32, 64]
    assert positions(100, 32, 32, to_edge=True) == [0, 32, 64, 68]
    assert positions(96, 32, 16, to_edge=True) == [0, 16, 32, 48, 64]
    assert positions(20, 32, 16, to_edge=True) == []


def test_few_scenes_split_by_block_without_leaks_and_val_never_overlaps(tmp_path):
    images, labels = scenes(tmp_path / "scenes", 2, 160, 130)
    out = tmp_path / "tiles"
    result = tile_scenes(images, labels, out, TileOptions(tile=32, stride=16, val_fraction=0.25))
    assert result.split_by == "block"
    train, val = split_stems(out, "train"), split_stems(out, "val")
    # Val block: round(160 * 0.25 / 32) = 1 tile row -> rows 128..160; train rows 0..128 at stride 16.
    train_rows = positions(128, 32, 16, True)
    train_cols = positions(130, 32, 16, True)
    assert len(train) == 2 * len(train_rows) * len(train_cols) == result.tiles["train"]
    assert len(val) == 2 * 1 * (130 // 32) == result.tiles["val"]
    for stem in train:
        _, row, _ = window_of(stem, 32)
        assert row + 32 <= 128  # no train pixel inside a val block
    covered: dict[str, np.ndarray] = {}
    for stem in val:
        scene, row, col = window_of(stem, 32)
        assert row >= 128
        grid = covered.setdefault(scene, np.zeros((160, 130), np.int32))
        grid[row:row + 32, col:col + 32] += 1
    assert all(grid.max() == 1 for grid in covered.values())  # each val pixel scored once
    assert not set(train) & set(val)


def test_many_scenes_split_by_scene(tmp_path):
    images, labels = scenes(tmp_path / "scenes", 6, 64, 64)
    out = tmp_path / "tiles"
    result = tile_scenes(images, labels, out, TileOptions(tile=32, stride=16, val_fraction=0.34, seed=3))
    assert result.split_by == "scene"
    train_scenes = {window_of(s, 32)[0] for s in split_stems(out, "train")}
    val_scenes = {window_of(s, 32)[0] for s in split_stems(out, "val")}
    assert len(val_scenes) == 2 and not train_scenes & val_scenes and len(train_scenes) == 4
    assert result.tiles == {"train": 4 * 9, "val": 2 * 4}  # stride 16: 3x3 train tiles; val 2x2 without overlap


def test_a_tile_is_the_window_of_its_scene_with_its_georeferencing(tmp_path):
    images, labels = scenes(tmp_path / "scenes", 1, 128, 96)
    out = tmp_path / "tiles"
    tile_scenes(images, labels, out, TileOptions(tile=32, stride=32, val_fraction=0.25))
    with rasterio.open(images / "s0.tif") as scene, rasterio.open(labels / "s0.tif") as label_scene:
        for stem in split_stems(out, "train")[:3] + split_stems(out, "val")[:2]:
            _, row, col = window_of(stem, 32)
            window = Window(col, row, 32, 32)
            with rasterio.open(out / "JPEGImages" / f"{stem}.tif") as tile:
                assert tile.crs == scene.crs and tile.count == 4 and tile.dtypes[0] == "uint16"
                assert tile.transform.almost_equals(scene.transform @ Affine.translation(col, row))
                np.testing.assert_array_equal(tile.read(), scene.read(window=window))
            np.testing.assert_array_equal(load_label(out / "SegmentationClass" / f"{stem}.png"),
                                          label_scene.read(1, window=window))


def test_nodata_and_ignored_tiles_are_skipped_and_nodata_pixels_ignored(tmp_path):
    rng = np.random.default_rng(0)
    image, label = make_scene(rng, 64, 96)
    image[:, :32] = 0  # first tile column: all nodata
    label[:, 64:] = 255  # last tile column: all ignored
    image[:5, 40:45] = 0  # a few nodata pixels inside a kept tile
    write_scene_pair(tmp_path / "images" / "a.tif", tmp_path / "labels" / "a.tif", image, label, nodata=0)
    result = tile_scenes(tmp_path / "images", tmp_path / "labels", tmp_path / "tiles",
                         TileOptions(tile=32, val_fraction=0.5))
    assert (result.skipped_nodata, result.skipped_ignored) == (2, 2)
    assert split_stems(tmp_path / "tiles", "train") == ["a_00000_00032"]
    kept = load_label(tmp_path / "tiles" / "SegmentationClass" / "a_00000_00032.png")
    assert (kept[:5, 8:13] == 255).all() and (kept[5:] != 255).all()


@pytest.mark.parametrize("change", ["size", "transform", "crs"])
def test_a_label_that_does_not_match_its_image_exits_2(tmp_path, change):
    rng = np.random.default_rng(0)
    image, label = make_scene(rng, 64, 64)
    write_scene_pair(tmp_path / "images" / "a.tif", tmp_path / "unused" / "a.tif", image, label)
    if change == "size":
        write_scene_pair(tmp_path / "other" / "a.tif", tmp_path / "labels" / "a.tif", image[:48], label[:48])
    elif change == "transform":
        write_scene_pair(tmp_path / "other" / "a.tif", tmp_path / "labels" / "a.tif", image, label,
                         origin=(500010.0, 5000000.0))
    else:
        write_scene_pair(tmp_path / "other" / "a.tif", tmp_path / "labels" / "a.tif", image, label,
                         crs="EPSG:32632")
    with pytest.raises(UserError, match={"size": "64x48 px", "transform": "transform", "crs": "CRS"}[change]):
        tile_scenes(tmp_path / "images", tmp_path / "labels", tmp_path / "t1", TileOptions(tile=32))
    done = subprocess.run([sys.executable, "voc_annotation.py", "--from-rasters", str(tmp_path / "images"),
                           str(tmp_path / "labels"), "--tile", "32", "--data-root", str(tmp_path / "t2"),
                           "--num-classes", "3"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: label") and "a.tif" in lines[0]


def test_voc_annotation_cuts_scenes_and_checks_the_result(tmp_path):
    images, labels = scenes(tmp_path / "scenes", 2, 96, 96)
    out = tmp_path / "tiles"
    args = [sys.executable, "voc_annotation.py", "--from-rasters", str(images), str(labels), "--tile", "32",
            "--stride", "16", "--data-root", str(out), "--num-classes", "3", "--train-percent", "0.7"]
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "no problems found" in done.stdout and "val is a block of rows" in done.stdout
    assert split_stems(out, "val") and split_stems(out, "train")
    again = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already holds files" in again.stderr
