"""Tests for utils/data/io.py: every image mode and extension, EXIF, unreadable files, labels, class lists."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from utils.data.io import IMAGE_EXTENSIONS, VOC_CLASSES, default_class_names, load_image, load_label, read_class_names
from utils.errors import UserError


def _blocks(h: int = 16, w: int = 24) -> np.ndarray:
    """An RGB image of four flat colour blocks (survives JPEG well enough for tolerant comparisons)."""
    image = np.zeros((h, w, 3), np.uint8)
    image[: h // 2, : w // 2] = (220, 30, 30)
    image[: h // 2, w // 2:] = (30, 200, 40)
    image[h // 2:, : w // 2] = (20, 40, 210)
    image[h // 2:, w // 2:] = (240, 240, 20)
    return image


@pytest.mark.parametrize("ext", IMAGE_EXTENSIONS)
def test_every_extension_reads_as_rgb(tmp_path, ext):
    image = _blocks()
    path = tmp_path / f"a{ext}"
    Image.fromarray(image).save(path, **({"quality": 95} if ext in (".jpg", ".jpeg", ".webp") else {}))
    loaded = load_image(path)
    assert loaded.dtype == np.uint8 and loaded.shape == image.shape
    error = np.abs(loaded.astype(int) - image)
    if ext in (".jpg", ".jpeg", ".webp"):
        assert error.mean() < 8  # lossy: colour blocks survive, edges blur
    else:
        assert error.max() == 0


def test_grey_palette_alpha_and_one_bit_modes(tmp_path):
    grey = np.arange(12 * 10, dtype=np.uint8).reshape(12, 10)
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    assert np.array_equal(load_image(tmp_path / "grey.png"), np.repeat(grey[..., None], 3, axis=2))

    rgba = np.dstack([_blocks(), np.full((16, 24), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(tmp_path / "rgba.png"), _blocks())

    Image.fromarray(np.dstack([grey, grey]), "LA").save(tmp_path / "la.png")
    assert np.array_equal(load_image(tmp_path / "la.png")[..., 1], grey)

    palette_image = Image.fromarray(_blocks()).quantize(colors=4)
    palette_image.save(tmp_path / "pal.png")
    assert np.array_equal(load_image(tmp_path / "pal.png"), _blocks())
    palette_image.save(tmp_path / "pal_t.png", transparency=0)
    assert np.array_equal(load_image(tmp_path / "pal_t.png"), _blocks())

    Image.fromarray(grey > 60).save(tmp_path / "bits.png")
    assert set(np.unique(load_image(tmp_path / "bits.png"))) == {0, 255}


def test_sixteen_bit_is_scaled_to_eight_bits(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 257]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as check:
        assert check.mode.startswith("I")
    loaded = load_image(tmp_path / "deep.png")
    assert loaded[0, :, 0].tolist() == [0, 100, 255, 1]
    assert loaded.shape == (1, 4, 3)


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_cmyk_becomes_correct_rgb(tmp_path, ext):
    Image.fromarray(_blocks()).convert("CMYK").save(tmp_path / f"cmyk{ext}")
    with Image.open(tmp_path / f"cmyk{ext}") as check:
        assert check.mode == "CMYK"
    assert np.abs(load_image(tmp_path / f"cmyk{ext}").astype(int) - _blocks()).mean() < 8


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_exif_orientation_is_applied(tmp_path, ext):
    image = _blocks(16, 24)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    Image.fromarray(image).save(tmp_path / f"o{ext}", exif=exif, **({"quality": 98, "subsampling": 0}
                                                                     if ext == ".jpg" else {}))
    loaded = load_image(tmp_path / f"o{ext}")
    assert loaded.shape == (24, 16, 3)
    assert np.abs(loaded.astype(int) - np.rot90(image, k=-1)).mean() < (8 if ext == ".jpg" else 1e-9)


@pytest.mark.parametrize("kind", ["truncated-png", "truncated-jpg", "text", "missing"])
def test_unreadable_images_raise_user_error(tmp_path, kind):
    ext = ".jpg" if kind.endswith("jpg") else ".png"
    path = tmp_path / f"bad{ext}"
    if kind.startswith("truncated"):
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
            buffer, format="JPEG" if ext == ".jpg" else "PNG")
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif kind == "text":
        path.write_text("not an image")
    with pytest.raises(UserError, match="bad"):
        load_image(path)


def test_load_label_modes(tmp_path):
    label = np.array([[0, 1, 2], [255, 3, 0]], np.uint8)
    from utils.data.io import save_label

    save_label(label, tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P"
    assert np.array_equal(load_label(tmp_path / "p.png"), label)
    Image.fromarray(label, "L").save(tmp_path / "l.png")
    assert np.array_equal(load_label(tmp_path / "l.png"), label)
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match=r"rgb\.png.*colour"):
        load_label(tmp_path / "rgb.png")
    Image.fromarray(label.astype(np.uint16) * 300).save(tmp_path / "deep.png")
    with pytest.raises(UserError, match="8-bit"):
        load_label(tmp_path / "deep.png")


def test_read_class_names(tmp_path):
    (tmp_path / "c.txt").write_text("background\n cat \n\ndog\n")
    assert read_class_names(tmp_path / "c.txt") == ["background", "cat", "dog"]
    (tmp_path / "d.txt").write_text("background\ncat\ncat\n")
    with pytest.raises(UserError, match="cat"):
        read_class_names(tmp_path / "d.txt")
    with pytest.raises(UserError, match="not found"):
        read_class_names(tmp_path / "none.txt")
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[0] == "background"


def test_default_class_names_one_rule():
    assert default_class_names(21) == list(VOC_CLASSES)
    assert default_class_names(3) == ["background", "class_1", "class_2"]
