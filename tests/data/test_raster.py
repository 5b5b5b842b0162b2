"""Rasters as images: reading bands and dtypes, per-band statistics, normalisation, mixed datasets, corrupt files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

from nets.spec import ModelSpec
from utils.data.dataset import SegmentationDataset
from utils.data.io import save_label
from utils.data.normalize import Normalization
from utils.data.raster import check_bands, parse_bands, read_image, read_raster
from utils.data.stats import band_statistics
from utils.data.transforms import AugmentParams, augment, letterbox
from utils.errors import UserError
from utils.inference.engine import Engine
from utils.inference.options import InferenceOptions, SlideOptions
from utils.inference.predictor import Predictor
from utils.inference.slide import slide_predict

REPO = Path(__file__).resolve().parents[2]


class Identity:
    """A backend that returns its input batch (on the CPU)."""

    device = torch.device("cpu")

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return batch


def write_raster(path: Path, data: np.ndarray, nodata: float | None = None) -> Path:
    """Write (H, W, C) ``data`` as a GeoTIFF with a UTM CRS and a 10 m transform."""
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[0], width=data.shape[1], count=data.shape[2],
                       dtype=data.dtype.name, crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000),
                       nodata=nodata, compress="deflate") as target:
        target.write(data.transpose(2, 0, 1))
    return path


def corrupt(path: Path) -> Path:
    """Overwrite the second half of a compressed GeoTIFF's bytes (its data blocks; the header stays)."""
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2:-16] = b"\xab" * (len(raw) // 2 - 16)
    path.write_bytes(bytes(raw))
    return path


def raster_dataset(root: Path, images: list[np.ndarray], val: int = 1, seed: int = 0) -> Path:
    """A VOC-layout dataset of GeoTIFF images (the last ``val`` in val) with random 3-class labels."""
    rng = np.random.default_rng(seed)
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    stems = [f"img_{i}" for i in range(len(images))]
    for stem, image in zip(stems, images, strict=True):
        write_raster(root / "JPEGImages" / f"{stem}.tif", image)
        save_label(rng.integers(0, 3, image.shape[:2]).astype(np.uint8), root / "SegmentationClass" / f"{stem}.png")
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(stems[:-val]) + "\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("\n".join(stems[-val:]) + "\n")
    (root / "classes.txt").write_text("a\nb\nc\n")
    return root


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
def test_read_raster_keeps_the_dtype_and_selects_bands_in_gdal_order(tmp_path, dtype):
    data = (np.random.default_rng(1).random((20, 30, 5)) * 1000 - (500 if dtype in ("int16", "float32") else 0))
    data = data.astype(dtype)
    path = write_raster(tmp_path / "scene.tif", data)
    full = read_raster(path)
    assert full.dtype == np.dtype(dtype) and full.shape == (20, 30, 5)
    np.testing.assert_array_equal(full, data)
    np.testing.assert_array_equal(read_raster(path, (4, 3, 2)), data[:, :, [3, 2, 1]])
    np.testing.assert_array_equal(read_image(path, [5]), data[:, :, [4]])


def test_band_selection_errors_name_the_file_and_the_range(tmp_path):
    path = write_raster(tmp_path / "scene.tif", np.zeros((8, 8, 4), np.uint16))
    with pytest.raises(UserError, match=r"band 5 out of range: .*scene.tif has 4 band\(s\), numbered 1..4"):
        read_raster(path, (5, 1))
    assert check_bands(3, None) == (1, 2, 3)
    assert parse_bands("4,3,2") == (4, 3, 2) and parse_bands(None) is None
    for text in ("0,1", "a,b", "", "4,,2"):
        with pytest.raises(UserError, match="1-based band numbers"):
            parse_bands(text)


def test_not_a_raster_and_a_corrupt_raster_are_user_errors(tmp_path):
    fake = tmp_path / "fake.tif"
    fake.write_bytes(b"not a tiff at all")
    with pytest.raises(UserError, match="fake.tif"):
        read_raster(fake)
    data = np.random.default_rng(0).integers(0, 4000, (64, 64, 4)).astype(np.uint16)
    broken = corrupt(write_raster(tmp_path / "broken.tif", data))
    with pytest.raises(UserError, match=r"cannot decode raster .*broken.tif"):
        read_raster(broken)


def test_band_statistics_match_numpy_over_every_pixel():
    rng = np.random.default_rng(3)
    # Heights beyond the 256-row chunks, very different scales, and a constant band.
    images = [np.concatenate([rng.normal(3000, 400, (h, 17, 2)), rng.normal(-20, 3, (h, 17, 1)),
                              np.full((h, 17, 1), 7.0)], axis=2).astype(np.float32) for h in (300, 41, 530)]
    mean, std = band_statistics(lambda i: (images[i], None), range(3), 4, progress=False)
    pixels = np.concatenate([image.reshape(-1, 4) for image in images]).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(std[:3], pixels.std(axis=0)[:3], rtol=1e-10)
    assert std[3] == 1.0  # a constant band only shifts: a std of 0 cannot scale


def test_nodata_pixels_stay_out_of_the_statistics_and_are_filled_with_the_mean(tmp_path):
    """A 2-band uint16 tile whose left third is nodata 0: the train split's statistics are those of the valid
    pixels alone, and the dataset gives the nodata pixels the (rounded) band mean, as predict.py fills scenes."""
    rng = np.random.default_rng(4)
    images = [rng.integers(1000, 5000, (40, 60, 2)).astype(np.uint16) for _ in range(3)]
    for image in images[:2]:
        image[:, :20] = 0
    root = tmp_path / "data"
    raster_dataset(root, images, val=1)
    for i, image in enumerate(images):
        write_raster(root / "JPEGImages" / f"img_{i}.tif", image, nodata=0)
    train = SegmentationDataset(root, "train", (40, 60), 3, train=False)
    image, valid = train.read_image_valid(0)
    assert valid.shape == (40, 60) and not valid[:, :20].any() and valid[:, 20:].all()
    val = SegmentationDataset(root, "val", (40, 60), 3, train=False)
    assert val.read_image_valid(0)[1] is None  # a nodata value declared but never used: all valid
    mean, std = band_statistics(train.read_image_valid, range(len(train)), 2, progress=False)
    pixels = np.concatenate([image[:, 20:].reshape(-1, 2) for image in images[:2]]).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-10)
    train.normalization = Normalization(mean, std)
    filled = train.read_image(0)
    np.testing.assert_array_equal(filled[:, :20], np.broadcast_to(np.rint(mean).astype(np.uint16), (40, 20, 2)))
    np.testing.assert_array_equal(filled[:, 20:], images[0][:, 20:])


def test_engine_normalises_per_band_and_pads_with_the_mean():
    mean, std = (1000.0, 2000.0, 10.0, 0.0), (100.0, 50.0, 2.0, 4.0)
    engine = Engine(Identity(), ModelSpec(in_channels=4).task_obj, (8, 8), normalization=Normalization(mean, std))
    canvas = np.random.default_rng(0).integers(0, 4000, (8, 8, 4)).astype(np.uint16)
    batch = engine.to_batch([canvas])
    expected = (canvas.astype(np.float64) - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(batch[0].permute(1, 2, 0).numpy(), expected, rtol=1e-6)
    assert engine.fill(canvas).tolist() == [1000, 2000, 10, 0] and engine.fill(canvas).dtype == np.uint16
    plain = Engine(Identity(), ModelSpec().task_obj, (8, 8))
    photo = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    np.testing.assert_allclose(plain.to_batch([photo])[0].permute(1, 2, 0).numpy(), photo / 255.0, rtol=1e-6)
    assert plain.fill(photo) == 128


def test_letterbox_and_augment_keep_bands_and_dtype_and_pad_with_the_fill():
    rng = np.random.default_rng(0)
    image = rng.integers(100, 4000, (30, 50, 6)).astype(np.uint16)
    label = rng.integers(0, 3, (30, 50)).astype(np.uint8)
    fill = np.array([1, 2, 3, 4, 5, 6], np.uint16)
    canvas, label_canvas, box = letterbox(image, (40, 40), label, fill=fill)
    assert canvas.shape == (40, 40, 6) and canvas.dtype == np.uint16
    np.testing.assert_array_equal(canvas[0, 0], fill)  # above the content box: padding
    assert box.top > 0 and (label_canvas[0] == 255).all()
    padded_somewhere = False
    for seed in range(12):
        out, out_label = augment(image, label, (32, 32), np.random.default_rng(seed), fill=fill)
        assert out.shape == (32, 32, 6) and out.dtype == np.uint16 and out_label.shape == (32, 32)
        assert set(np.unique(out_label)) <= {0, 1, 2, 255}
        # Without blur and rotation, every padded pixel (label 255) holds the fill exactly.
        flat, flat_label = augment(image, label, (32, 32), np.random.default_rng(seed),
                                   AugmentParams(blur_p=0, rotate_p=0), fill=fill)
        padded_somewhere |= bool((flat_label == 255).any())
        assert (flat[flat_label == 255] == fill).all()
    assert padded_somewhere


def test_predictor_takes_uint16_bands_with_statistics_and_refuses_them_without(tmp_path):
    class Mean4(torch.nn.Module):
        """Class 1 where band 4 (normalised) is positive."""

        def forward(self, x):
            return torch.cat([-x[:, 3:4], x[:, 3:4]], 1)

    spec = ModelSpec(num_classes=2, in_channels=4, input_size=(16, 16), mean=(0, 0, 0, 2000), std=(1, 1, 1, 100))
    predictor = Predictor(Mean4(), spec, InferenceOptions(device="cpu", optimize=False, channels_last=False))
    image = np.zeros((20, 24, 4), np.uint16)
    image[:, 12:, 3] = 3000
    image[:, :12, 3] = 1000
    mask = predictor.predict([image])[0]
    assert (mask[:, :10] == 0).all() and (mask[:, 14:] == 1).all()
    slide = slide_predict(predictor.engine, image, SlideOptions(progress=False))
    assert (slide[:, :10] == 0).all() and (slide[:, 14:] == 1).all()
    plain = Predictor(Mean4(), ModelSpec(num_classes=2, in_channels=4), InferenceOptions(device="cpu", optimize=False))
    with pytest.raises(ValueError, match=r"uint8 arrays of shape \(H, W, 4\)"):
        plain.predict([image])


def test_dataset_reads_bands_and_reports_its_kind(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 5000, (24, 32, 4)).astype(np.uint16) for _ in range(3)]
    root = raster_dataset(tmp_path / "ds", images)
    dataset = SegmentationDataset(root, "train", (16, 16), 3, False, bands=(4, 2))
    assert dataset.kind == (2, "uint16") and not dataset.rgb8
    image, _ = dataset.load_pair(1)
    np.testing.assert_array_equal(image, images[1][:, :, [3, 1]])
    sample, _ = dataset[0]
    assert sample.shape == (2, 16, 16) and sample.dtype == torch.uint16
    with pytest.raises(UserError, match=r"band 7 out of range: .*img_0.tif has 4 band"):
        SegmentationDataset(root, "train", (16, 16), 3, False, bands=(7,))


@pytest.mark.parametrize("odd", [np.zeros((24, 32, 3), np.uint16), np.zeros((24, 32, 4), np.float32)])
def test_mixed_bands_or_dtypes_name_a_file_of_each_kind(tmp_path, odd):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 5000, (24, 32, 4)).astype(np.uint16) for _ in range(3)] + [odd]
    root = raster_dataset(tmp_path / "ds", images, val=1)
    (root / "ImageSets/Segmentation/train.txt").write_text("img_0\nimg_1\nimg_3\n")
    with pytest.raises(UserError) as caught:
        SegmentationDataset(root, "train", (16, 16), 3, True)
    message = str(caught.value)
    assert "img_0.tif has 4 band(s) of uint16" in message
    assert f"img_3.tif has {odd.shape[2]} band(s) of {odd.dtype.name}" in message


def run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_train_py_exits_2_on_mixed_kinds_and_on_a_corrupt_raster(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 5000, (24, 32, 4)).astype(np.uint16) for _ in range(3)]
    root = raster_dataset(tmp_path / "ds", [*images, np.zeros((24, 32, 3), np.uint8)], val=1)
    flags = ["--classes", str(root / "classes.txt"), "--input-size", "32", "--epochs", "1", "--workers", "0",
             "--device", "cpu", "--save-dir", str(tmp_path / "run"), "--batch-size", "2"]
    mixed = run_script("train.py", "--data-root", str(root), *flags)
    assert mixed.returncode == 2
    lines = mixed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the train and val splits hold different images")

    root = raster_dataset(tmp_path / "bad", [*images, images[0]], val=1)
    corrupt(write_raster(root / "JPEGImages" / "img_1.tif", rng.integers(0, 5000, (64, 64, 4)).astype(np.uint16)))
    save_label(np.zeros((64, 64), np.uint8), root / "SegmentationClass" / "img_1.png")
    broken = run_script("train.py", "--data-root", str(root), *flags)
    assert broken.returncode == 2
    last = broken.stderr.strip().splitlines()[-1].split("\r")[-1]  # after the progress bar's updates
    assert last.startswith("error: cannot decode raster") and "img_1.tif" in last
    assert "Traceback" not in broken.stderr
    out_of_range = run_script("train.py", "--data-root", str(root), "--bands", "2,9", *flags)
    assert out_of_range.returncode == 2 and "band 9 out of range" in out_of_range.stderr
