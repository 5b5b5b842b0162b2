"""The windowed scene loop (utils/geo/scene.py) against the in-memory sliding window, and its GeoTIFF outputs."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.warp import transform_bounds

from tests.geo.conftest import smooth_bands, write_scene
from utils.errors import UserError
from utils.geo.detect import is_scene
from utils.geo.scene import SceneOptions, predict_scene
from utils.geo.strips import plan_strips, strip_width
from utils.inference.options import InferenceOptions
from utils.inference.outputs import quantize_prob
from utils.inference.predictor import Predictor
from utils.inference.slide import strides
from utils.inference.visualize import make_palette


def predictor_of(entry, batch_size: int = 1) -> Predictor:
    model, spec, _ = entry
    return Predictor(model, spec, InferenceOptions(device="cpu", precision="fp32", mode="slide",
                                                   batch_size=batch_size))


def hwc(samples: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(samples.transpose(1, 2, 0))


@pytest.mark.parametrize(("strip", "batch_size"), [(None, 1), (48, 4), (100, 3)])
def test_labels_equal_the_in_memory_sliding_window(scene_models, tmp_path, strip, batch_size):
    """One strip (the whole scene) or many: every pixel averages the same windows as the whole-scene slide."""
    samples = smooth_bands(3, 150, 230, seed=1)
    source = write_scene(tmp_path / "scene.tif", samples)
    predictor = predictor_of(scene_models["multi"], batch_size)
    result = predict_scene(predictor, source, tmp_path / "out" / "scene.tif",
                           SceneOptions(strip=strip, progress=False))
    expected = predictor.predict([hwc(samples)])[0]
    assert len(set(np.unique(expected))) >= 2  # the model draws regions, the comparison is not trivial
    with rasterio.open(tmp_path / "out" / "scene.tif") as out, rasterio.open(source) as src:
        assert (out.crs, out.transform, out.width, out.height) == (src.crs, src.transform, src.width, src.height)
        assert out.count == 1 and out.dtypes == ("uint8",) and out.nodata == 255
        assert out.profile["tiled"] and out.profile["compress"] == "deflate"
        np.testing.assert_array_equal(out.read(1), expected)
        colours = out.colormap(1)
    for index, colour in enumerate(make_palette(3)):
        assert colours[index][:3] == tuple(int(c) for c in colour)
    np.testing.assert_array_equal(result.counts, np.bincount(expected.ravel(), minlength=3))


def test_strips_cover_the_scene_once_and_carry_the_scene_windows():
    window, stride = 64, strides((64, 64), 0.33)[1]
    strips = plan_strips(230, window, stride, 70)
    covered = np.zeros(230, dtype=int)
    grid = [min(i * stride, 230 - 64) for i in range((230 - 64 + stride - 1) // stride + 1)]
    for strip in strips:
        covered[slice(*strip.core_cols)] += 1
        # Every window of the scene grid covering a core column is among the strip's windows, and no other.
        needed = sorted({s for s in grid if s < strip.core_cols[1] and s + 64 > strip.core_cols[0]})
        assert [x + strip.region_cols[0] for x in strip.xs] == needed
        assert strip.region_cols == (needed[0], needed[-1] + 64)
    assert (covered == 1).all()
    assert len(strips) == math.ceil(230 / 70)


def test_strip_width_keeps_the_working_set_within_its_budget():
    from utils.geo.strips import STRIP_BYTES, TILE
    for classes, bands, itemsize in [(6, 4, 2), (2, 3, 1), (21, 13, 4)]:
        width = strip_width(classes, bands, itemsize, (512, 512))
        assert width % TILE == 0 and width >= 1024
        per_column = 512 * (3 * 4 * classes + bands * itemsize + 1)
        assert (width + 512) * per_column <= STRIP_BYTES or width == 1024
    assert strip_width(6, 4, 2, (512, 512)) == 4096  # the benchmark's case (BENCHMARKS.md)


@pytest.mark.parametrize(("height", "width"), [(13, 12), (150, 20), (20, 150)])
def test_scene_smaller_than_a_window(scene_models, tmp_path, height, width):
    """Shorter or narrower than a window (64 px): padded like an in-memory image, same labels."""
    samples = smooth_bands(3, height, width, seed=2)
    source = write_scene(tmp_path / "tiny.tif", samples)
    predictor = predictor_of(scene_models["multi"])
    predict_scene(predictor, source, tmp_path / "o" / "tiny.tif", SceneOptions(strip=48, progress=False))
    with rasterio.open(tmp_path / "o" / "tiny.tif") as out:
        assert (out.height, out.width) == (height, width)
        np.testing.assert_array_equal(out.read(1), predictor.predict([hwc(samples)])[0])


def _invalid_box(height, width):
    valid = np.ones((height, width), dtype=bool)
    valid[20:70, 30:110] = False
    return valid


@pytest.mark.parametrize("kind", ["nodata", "mask", "alpha"])
def test_nodata_from_value_mask_and_alpha(scene_models, tmp_path, kind):
    samples = smooth_bands(3, 120, 160, seed=3)
    samples[samples == 0] = 1  # 0 is the nodata value below: no valid pixel may carry it
    valid = _invalid_box(120, 160)
    if kind == "nodata":
        samples[:, ~valid] = 0
        source = write_scene(tmp_path / "s.tif", samples, nodata=0)
    elif kind == "mask":
        source = write_scene(tmp_path / "s.tif", samples, mask=valid)
    else:
        alpha = np.where(valid, 255, 0).astype(np.uint8)[None]
        source = write_scene(tmp_path / "s.tif", np.concatenate([samples, alpha]), alpha=True)
    predict_scene(predictor_of(scene_models["multi"]), source, tmp_path / "o" / "s.tif",
                  SceneOptions(strip=64, progress=False))
    with rasterio.open(tmp_path / "o" / "s.tif") as out:
        labels = out.read(1)
        assert (labels[~valid] == 255).all()
        assert (labels[valid] < 3).all()


def test_huge_float_nodata_does_not_spill_into_valid_pixels(scene_models, tmp_path):
    """Invalid samples are replaced before the network: the valid pixels get the labels of the same scene
    whose invalid samples hold the fill value (grey) instead of -3.4e38."""
    samples = smooth_bands(3, 100, 120, seed=4).astype(np.float32)
    valid = _invalid_box(100, 120)
    filled = samples.copy()
    filled[:, ~valid] = 128
    samples[:, ~valid] = -3.4e38
    source = write_scene(tmp_path / "f.tif", samples, nodata=-3.4e38)
    reference = write_scene(tmp_path / "g.tif", filled)
    predictor = predictor_of(scene_models["multi"])
    predict_scene(predictor, source, tmp_path / "o" / "f.tif", SceneOptions(progress=False))
    predict_scene(predictor, reference, tmp_path / "o" / "g.tif", SceneOptions(progress=False))
    with rasterio.open(tmp_path / "o" / "f.tif") as got, rasterio.open(tmp_path / "o" / "g.tif") as want:
        labels, expected = got.read(1), want.read(1)
    assert (labels[~valid] == 255).all()
    np.testing.assert_array_equal(labels[valid], expected[valid])


def test_all_nodata_scene(scene_models, tmp_path):
    source = write_scene(tmp_path / "empty.tif", np.zeros((3, 90, 70), dtype=np.uint8), nodata=0)
    result = predict_scene(predictor_of(scene_models["multi"]), source, tmp_path / "o" / "empty.tif",
                           SceneOptions(polygons=True, save_prob=True, progress=False))
    with rasterio.open(tmp_path / "o" / "empty.tif") as out:
        assert (out.read(1) == 255).all()
    assert json.loads((tmp_path / "o" / "empty.geojson").read_text())["features"] == []
    assert result.counts.sum() == 0


@pytest.mark.parametrize("bits", [8, 16])
def test_prob_tif_of_a_binary_model(scene_models, tmp_path, bits):
    samples = smooth_bands(3, 110, 140, seed=5)
    valid = _invalid_box(110, 140)
    source = write_scene(tmp_path / "b.tif", samples, mask=valid)
    predictor = predictor_of(scene_models["binary"])
    predict_scene(predictor, source, tmp_path / "o" / "b.tif",
                  SceneOptions(save_prob=True, prob_bits=bits, strip=64, progress=False))
    # The reference: the whole scene in memory with the invalid pixels filled as the reader fills them.
    filled = samples.copy()
    filled[:, ~valid] = 128
    mask, prob = predictor.predict_with_prob([hwc(filled)])[0]
    with rasterio.open(tmp_path / "o" / "b_prob.tif") as out:
        assert out.dtypes == ("uint8" if bits == 8 else "uint16",)
        assert out.crs == rasterio.crs.CRS.from_string("EPSG:32633")
        levels = out.read(1)
        np.testing.assert_array_equal(levels[valid], quantize_prob(prob, bits)[valid])
        assert (out.read_masks(1)[~valid] == 0).all() and (out.read_masks(1)[valid] == 255).all()
    with rasterio.open(tmp_path / "o" / "b.tif") as out:
        np.testing.assert_array_equal(out.read(1)[valid], mask[valid])
    top = 255 if bits == 8 else 65535
    np.testing.assert_array_equal(levels[valid] >= round(0.5 * top), mask[valid] == 1)


def test_preview_size(scene_models, tmp_path):
    source = write_scene(tmp_path / "wide.tif", smooth_bands(3, 70, 250, seed=6))
    predict_scene(predictor_of(scene_models["multi"], 4), source, tmp_path / "o" / "wide.tif",
                  SceneOptions(preview_side=100, progress=False))
    preview = cv2.imread(str(tmp_path / "o" / "wide_preview.png"), cv2.IMREAD_UNCHANGED)
    factor = math.ceil(250 / 100)  # the smallest integer shrink that fits 100 pixels
    height, width = math.ceil(70 / factor), math.ceil(250 / factor)
    assert preview.shape == (height, width, 4)
    with rasterio.open(tmp_path / "o" / "wide.tif") as out:
        full = out.read(1)
    # Nearest neighbour: each preview pixel takes the source pixel under its centre.
    rows = np.floor((np.arange(height) + 0.5) * 70 / height).astype(int)
    cols = np.floor((np.arange(width) + 0.5) * 250 / width).astype(int)
    labels = full[rows][:, cols]
    palette = make_palette(3)
    np.testing.assert_array_equal(preview[..., 2::-1], palette[labels])


def test_geojson_polygons_in_wgs84(scene_models, tmp_path):
    samples = smooth_bands(3, 120, 150, seed=7)
    source = write_scene(tmp_path / "p.tif", samples)
    predictor = predictor_of(scene_models["multi"], 4)
    predict_scene(predictor, source, tmp_path / "o" / "p.tif", SceneOptions(polygons=True, progress=False))
    collection = json.loads((tmp_path / "o" / "p.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and "crs" not in collection
    with rasterio.open(source) as src:
        west, south, east, north = transform_bounds(src.crs, "EPSG:4326", *src.bounds)
    assert 14 < west < east < 16 and 41 < south < north < 42  # UTM 33N, 4600 km north: Italy
    with rasterio.open(tmp_path / "o" / "p.tif") as out:
        labels = out.read(1)
    # One feature per 4-connected region of each class, counted independently of rasterio.
    regions = sum(cv2.connectedComponents((labels == c).astype(np.uint8), connectivity=4)[0] - 1
                  for c in range(3))
    assert len(collection["features"]) == regions >= 2
    eps = 1e-6
    for feature in collection["features"]:
        assert feature["properties"]["class_name"] == ["background", "field", "water"][
            feature["properties"]["class_id"]]
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert (ring[:, 0] >= west - eps).all() and (ring[:, 0] <= east + eps).all()
        assert (ring[:, 1] >= south - eps).all() and (ring[:, 1] <= north + eps).all()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_scene_rule(tmp_path):
    rgb = smooth_bands(3, 40, 50)
    assert is_scene(write_scene(tmp_path / "geo_rgb.tif", rgb))  # 8-bit RGB with a CRS: a scene
    assert not is_scene(write_scene(tmp_path / "plain.tif", rgb, crs=None, transform=rasterio.Affine.identity()))
    assert is_scene(write_scene(tmp_path / "u16.tif", rgb.astype(np.uint16), crs=None,
                                transform=rasterio.Affine.identity()))
    assert is_scene(write_scene(tmp_path / "four.tif", smooth_bands(4, 40, 50), crs=None,
                                transform=rasterio.Affine.identity(), photometric="MINISBLACK"))
    # A plain RGBA TIFF is a photo with an alpha band.
    assert not is_scene(write_scene(tmp_path / "rgba.tif", smooth_bands(4, 40, 50), crs=None,
                                    transform=rasterio.Affine.identity(), alpha=True))
    cv2.imwrite(str(tmp_path / "photo.png"), rgb.transpose(1, 2, 0))
    assert not is_scene(tmp_path / "photo.png")


def test_corrupt_block_is_a_user_error_and_leaves_nothing(scene_models, tmp_path):
    source = write_scene(tmp_path / "bad.tif", smooth_bands(3, 128, 128, seed=8), tiled=True)
    corrupt_first_tile(source)
    with pytest.raises(UserError, match=r"bad\.tif: cannot read the pixels"):
        predict_scene(predictor_of(scene_models["multi"]), source, tmp_path / "o" / "bad.tif",
                      SceneOptions(progress=False))
    assert not any((tmp_path / "o").iterdir())


def corrupt_first_tile(path):
    """Overwrite the compressed bytes of the first tile of band 1 with garbage (the header stays valid)."""
    with rasterio.open(path) as dataset:
        offset = int(dataset.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(dataset.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xde\xad\xbe\xef" * (size // 4))


@pytest.mark.parametrize("strip", [None, 70])
def test_windows_without_valid_pixels_are_skipped_and_change_no_valid_label(scene_models, tmp_path, strip):
    """A whole row of windows (rows 43..107 lie in the invalid band) and a corner block of windows have no
    valid pixel: they skip the network, and every valid pixel keeps the label of the in-memory prediction."""
    samples = smooth_bands(3, 200, 230, seed=8)
    valid = np.ones((200, 230), dtype=bool)
    valid[40:120] = False
    valid[120:, :110] = False
    source = write_scene(tmp_path / "holes.tif", samples, mask=valid)
    predictor = predictor_of(scene_models["multi"], 2)
    ran = []
    backend = predictor.engine.backend
    predictor.engine.backend = lambda batch: ran.append(batch.shape[0]) or backend(batch)
    predict_scene(predictor, source, tmp_path / "o" / "holes.tif", SceneOptions(strip=strip, progress=False))
    predictor.engine.backend = backend
    filled = samples.copy()
    filled[:, ~valid] = 128
    expected = predictor.predict([hwc(filled)])[0]
    with rasterio.open(tmp_path / "o" / "holes.tif") as out:
        labels = out.read(1)
    assert (labels[~valid] == 255).all()
    np.testing.assert_array_equal(labels[valid], expected[valid])
    starts = [min(i * 43, 200 - 64) for i in range(5)], [min(i * 43, 230 - 64) for i in range(5)]
    void = sum(not valid[y:y + 64, x:x + 64].any() for y in starts[0] for x in starts[1])
    assert void >= 7  # the row of windows at 43, and the corner
    if strip is None:  # one strip: each window runs once, and the void ones not at all
        assert sum(ran) == 25 - void


@pytest.mark.parametrize(("batch_size", "largest"), [(None, 1), (3, 3)])
def test_scene_batch_is_one_window_on_a_cpu_unless_asked(scene_models, tmp_path, batch_size, largest):
    """The predictor's batch (4) is for photos: a scene on a CPU runs one window per pass unless told, and the
    predictor keeps its own batch afterwards."""
    source = write_scene(tmp_path / "s.tif", smooth_bands(3, 120, 150, seed=9))
    predictor = predictor_of(scene_models["multi"], 4)
    sizes = []
    backend = predictor.engine.backend
    predictor.engine.backend = lambda batch: sizes.append(batch.shape[0]) or backend(batch)
    predict_scene(predictor, source, tmp_path / "o" / "s.tif", SceneOptions(batch_size=batch_size, progress=False))
    assert max(sizes) == largest and sum(sizes) == 3 * 3  # 3 rows x 3 columns of 64 px windows, stride 43
    assert predictor.engine.batch_size == 4
