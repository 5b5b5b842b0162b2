"""The issue's "done when": a 4-band uint16 dataset where only band 4 tells the classes apart trains to a
clearly learned model through voc_annotation.py --from-rasters, train.py and get_miou.py, as in
docs/rasters.md (statistics recorded in the checkpoint, the same score from get_miou.py)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import rasterio

import get_miou
import train
import voc_annotation
from nets.spec import ModelSpec, build_model
from utils.checkpoint import CHECKPOINT_FORMAT, load_model, save_checkpoint
from utils.data.synthetic_rasters import write_scenes
from utils.errors import UserError


@pytest.fixture(scope="module")
def raster_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("rasters")
    write_scenes(base / "scenes", scenes=3, size=192, seed=0)
    tiles = base / "tiles"
    classes = str(base / "scenes" / "classes.txt")
    status = voc_annotation.main(voc_annotation.parse_args([
        "--from-rasters", str(base / "scenes" / "images"), str(base / "scenes" / "labels"), "--tile", "64",
        "--stride", "32", "--data-root", str(tiles), "--classes", classes, "--train-percent", "0.75"]))
    assert status == 0
    save_dir = base / "run"
    status = train.main(train.parse_args([
        "--data-root", str(tiles), "--classes", classes, "--crop-size", "64", "64", "--scale-range", "1", "1",
        "--epochs", "10", "--batch-size", "4", "--lr", "0.2", "--workers", "0", "--device", "cpu", "--save-dir",
        str(save_dir), "--eval-period", "2", "--save-period", "100"]))
    assert status == 0
    return tiles, save_dir


def test_statistics_of_the_train_split_are_in_the_checkpoint(raster_run):
    tiles, save_dir = raster_run
    _, spec = load_model(save_dir / "best.pth")
    assert (spec.in_channels, spec.bands) == (4, None)
    stems = (tiles / "ImageSets/Segmentation/train.txt").read_text().split()
    pixels = []
    for stem in stems:
        with rasterio.open(tiles / "JPEGImages" / f"{stem}.tif") as tile:
            pixels.append(tile.read().reshape(4, -1).astype(np.float64))
    pixels = np.concatenate(pixels, axis=1)
    np.testing.assert_allclose(spec.mean, pixels.mean(axis=1), rtol=1e-10)
    np.testing.assert_allclose(spec.std, pixels.std(axis=1), rtol=1e-8)
    # Band 4 carries the classes (levels 1000/2000/3000): its spread is the widest.
    assert spec.std[3] > 1.3 * max(spec.std[:3])


def test_only_band_4_is_learned_and_get_miou_scores_it_the_same(raster_run, tmp_path):
    tiles, save_dir = raster_run
    with open(save_dir / "metrics.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["miou"]]
    best = max(float(row["miou"]) for row in rows)
    assert best > 0.7, rows  # chance is about 0.33 with three balanced classes
    out = tmp_path / "miou"
    status = get_miou.main(get_miou.parse_args([
        "--weights", str(save_dir / "best.pth"), "--data-root", str(tiles), "--out", str(out), "--device", "cpu",
        "--no-progress"]))
    assert status == 0
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["miou"] == pytest.approx(best, abs=1e-4)
    masks = sorted((out / "detection-results").glob("*.png"))
    assert len(masks) == len((tiles / "ImageSets/Segmentation/val.txt").read_text().split())


def test_get_miou_refuses_images_the_model_cannot_take(raster_run, tmp_path):
    """A 4-band model scored with one band selected, and a model without statistics (8-bit) on uint16
    rasters: one clear error each."""
    tiles, save_dir = raster_run
    with pytest.raises(UserError, match=r"--bands 4 selects 1 band\(s\) but the model takes 4"):
        get_miou.main(get_miou.parse_args(["--weights", str(save_dir / "best.pth"), "--data-root", str(tiles),
                                           "--out", str(tmp_path / "m"), "--device", "cpu", "--bands", "4"]))
    rgb = tmp_path / "rgb.pth"
    save_checkpoint({"model": build_model(ModelSpec(num_classes=3, in_channels=4)).state_dict(),
                     "spec": ModelSpec(num_classes=3, in_channels=4).to_dict(), "format": CHECKPOINT_FORMAT}, rgb)
    with pytest.raises(UserError, match="holds uint16 bands but the model was trained on 8-bit images"):
        get_miou.main(get_miou.parse_args(["--weights", str(rgb), "--data-root", str(tiles), "--out",
                                           str(tmp_path / "m2"), "--device", "cpu"]))


@pytest.mark.parametrize(("flags", "message"), [
    (["--bands", "4,3,2,1"], r"trained on every band, but this run reads --bands 4,3,2,1: drop --bands"),
    (["--bands", "4,3,2"], r"trained with 4 input band\(s\), but this run has 3 input band\(s\)"),
])
def test_resume_refuses_other_bands(raster_run, flags, message):
    """Resuming on other bands (another order, or another count) stops before any state is loaded."""
    tiles, save_dir = raster_run
    with pytest.raises(UserError, match=message):
        train.main(train.parse_args([
            "--data-root", str(tiles), "--classes", str(tiles.parent / "scenes" / "classes.txt"), "--crop-size",
            "64", "64", "--epochs", "12", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--save-dir",
            str(save_dir), "--resume", str(save_dir / "last.pth"), *flags]))
