"""Tests of utils/evaluation/png.py and folders.py: the index-PNG reader and scoring folders."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from utils.data.io import save_label
from utils.errors import UserError
from utils.evaluation import folders as folders_module
from utils.evaluation import png
from utils.evaluation.confusion import ConfusionMatrix
from utils.evaluation.folders import score_folders
from utils.evaluation.png import read_index_png


def _write_grey(path, array):
    assert cv2.imwrite(str(path), array)


@pytest.fixture
def folders(tmp_path):
    """Ground truth (palette) and predictions (grey and palette) for five random pairs, 4 classes."""
    rng = np.random.default_rng(3)
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    stems, expected = [], ConfusionMatrix(4)
    for i in range(5):
        h, w = int(rng.integers(20, 48)), int(rng.integers(20, 64))
        gt = rng.integers(0, 4, (h, w)).astype(np.uint8)
        gt[rng.random((h, w)) < 0.1] = 255
        pred = rng.integers(0, 4, (h, w)).astype(np.uint8)
        save_label(gt, gt_dir / f"im{i}.png")
        if i % 2:
            _write_grey(pred_dir / f"im{i}.png", pred)
        else:
            save_label(pred, pred_dir / f"im{i}.png")
        stems.append(f"im{i}")
        expected.update(pred, gt)
    return gt_dir, pred_dir, stems, expected.numpy()


def test_read_index_png_grey_palette_and_fallbacks(tmp_path):
    labels = np.random.default_rng(2).integers(0, 21, (37, 53)).astype(np.uint8)
    labels[:4] = 255
    _write_grey(tmp_path / "grey.png", labels)
    save_label(labels, tmp_path / "palette.png")
    # A palette PNG with transparency: its tRNS chunk must be dropped along with PLTE.
    image = Image.fromarray(labels, mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    image.save(tmp_path / "trns.png", transparency=255)
    small = labels % 16
    Image.fromarray(small, mode="P").save(tmp_path / "four_bit.png", bits=4)
    # An unfiltered grey PNG (the palette file relabelled): the raw-inflate path for grey files.
    palette_bytes = (tmp_path / "palette.png").read_bytes()
    (tmp_path / "plain_grey.png").write_bytes(
        png._palette_as_grey(palette_bytes, png._png_chunks(palette_bytes)))
    for name in ("grey.png", "palette.png", "trns.png", "plain_grey.png"):
        np.testing.assert_array_equal(read_index_png(tmp_path / name), labels, err_msg=name)
    with Image.open(tmp_path / "four_bit.png") as four:
        expected = np.array(four)
    np.testing.assert_array_equal(read_index_png(tmp_path / "four_bit.png"), expected)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match=r"rgb\.png.*single-channel"):
        read_index_png(tmp_path / "rgb.png")
    _write_grey(tmp_path / "deep.png", np.zeros((4, 4), np.uint16))
    with pytest.raises(UserError, match="deep.png"):
        read_index_png(tmp_path / "deep.png")
    # A flipped byte inside the compressed data fails the IDAT CRC-32: reported, never scored.
    broken = bytearray(palette_bytes)
    idat = next(begin for kind, begin, _ in png._png_chunks(palette_bytes) if kind == b"IDAT")
    broken[idat + 10] ^= 0xFF
    (tmp_path / "broken.png").write_bytes(bytes(broken))
    with pytest.raises(UserError, match="broken.png"):
        read_index_png(tmp_path / "broken.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(UserError, match="junk.png"):
        read_index_png(tmp_path / "junk.png")


@pytest.mark.parametrize("workers", [1, 3])
def test_score_folders_matches_the_streaming_matrix(folders, workers):
    gt_dir, pred_dir, stems, expected = folders
    matrix = score_folders(gt_dir, pred_dir, stems, 4, workers=workers)
    assert matrix.dtype == np.int64
    np.testing.assert_array_equal(matrix, expected)


def test_score_folders_bad_inputs(folders, tmp_path):
    gt_dir, pred_dir, stems, _ = folders
    with pytest.raises(UserError, match=r"prediction folder .*nowhere not found"):
        score_folders(gt_dir, tmp_path / "nowhere", stems, 4)
    with pytest.raises(UserError, match=r"ground-truth file.*ghost\.png"):
        score_folders(gt_dir, pred_dir, [*stems, "ghost"], 4)
    (pred_dir / "im1.png").unlink()
    with pytest.raises(UserError, match=r"prediction\(s\) missing .*im1\.png"):
        score_folders(gt_dir, pred_dir, stems, 4)
    _write_grey(pred_dir / "im1.png", np.zeros((5, 7), np.uint8))
    gt_h, gt_w = read_index_png(gt_dir / "im1.png").shape
    with pytest.raises(UserError, match=rf"im1\.png is 7x5 but its ground truth .*im1\.png is {gt_w}x{gt_h}"):
        score_folders(gt_dir, pred_dir, stems, 4)
    bad = np.zeros((gt_h, gt_w), np.uint8)
    bad[0, 0] = 9
    _write_grey(pred_dir / "im1.png", bad)
    with pytest.raises(UserError, match=r"prediction .*im1\.png holds value\(s\) 9 .* only 4 classes"):
        score_folders(gt_dir, pred_dir, stems, 4)
    _write_grey(pred_dir / "im1.png", np.zeros((gt_h, gt_w), np.uint8))
    score_folders(gt_dir, pred_dir, stems, 4)  # fixed: scores again
    stray = read_index_png(gt_dir / "im2.png").copy()
    stray[1, 1] = 7
    save_label(stray, gt_dir / "im2.png")
    with pytest.raises(UserError, match=r"ground truth .*im2\.png holds value\(s\) 7"):
        score_folders(gt_dir, pred_dir, stems, 4)


@pytest.mark.parametrize("num_classes", [4, 256])
def test_joint_histogram_paths_agree(monkeypatch, num_classes):
    """calcHist (float32 bins) and the bincount path used for huge images count the same."""
    rng = np.random.default_rng(4)
    gt = rng.integers(0, num_classes, (31, 45)).astype(np.uint8)
    gt[:3] = 255
    gt[5, :4] = min(num_classes, 255)  # a stray value (a class when there are 256)
    pred = rng.integers(0, num_classes, gt.shape).astype(np.uint8)
    fast = folders_module._joint_histogram(gt, pred, num_classes)
    monkeypatch.setattr(folders_module, "_CALCHIST_MAX_PIXELS", 0)
    slow = folders_module._joint_histogram(gt, pred, num_classes)
    np.testing.assert_array_equal(fast, slow)
    assert fast.shape == (max(255, num_classes), num_classes)
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, gt)
    np.testing.assert_array_equal(fast[:num_classes], cm.numpy())


def test_score_folders_reports_the_earliest_bad_pair_in_split_order(folders):
    gt_dir, pred_dir, stems, _ = folders
    for stem in ("im1", "im3", "im4"):
        _write_grey(pred_dir / f"{stem}.png", np.zeros((2, 2), np.uint8))
    for workers in (1, 2, 3):
        with pytest.raises(UserError, match=r"pred/im1\.png is 2x2"):
            score_folders(gt_dir, pred_dir, stems, 4, workers=workers)


def test_label_map_remaps_the_ground_truth_as_it_is_read(tmp_path):
    from utils.data.label_map import parse_label_map

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    gt = np.zeros((10, 12), np.uint8)
    gt[2:6, 3:9] = 255
    pred = np.zeros((10, 12), np.uint8)
    pred[2:6, 3:7] = 1
    save_label(gt, gt_dir / "a.png")
    save_label(pred, pred_dir / "a.png")
    # Without a map 255 is ignore: only the 96 background pixels count.
    plain = score_folders(gt_dir, pred_dir, ["a"], 2, workers=1)
    assert plain.tolist() == [[96, 0], [0, 0]]
    mapped = score_folders(gt_dir, pred_dir, ["a"], 2, workers=1, label_map=parse_label_map("255:1"))
    assert mapped.tolist() == [[96, 0], [8, 16]]
    assert np.array_equal(read_index_png(gt_dir / "a.png"), gt)

def _png_with_filters(pixels: np.ndarray, kinds: list[int], colour_type: int = 0) -> bytes:
    """An 8-bit one-channel PNG whose row y is stored with PNG filter ``kinds[y]`` (0 None, 1 Sub, 2 Up,
    4 Paeth), encoded here by the PNG specification's formulas."""
    import struct
    import zlib

    height, width = pixels.shape
    values = pixels.astype(np.int32)
    stream = bytearray()
    for y, kind in enumerate(kinds):
        row = values[y]
        left = np.concatenate([[0], row[:-1]])
        up = values[y - 1] if y else np.zeros(width, np.int32)
        upleft = np.concatenate([[0], up[:-1]])
        if kind == 0:
            filtered = row
        elif kind == 1:
            filtered = row - left
        elif kind == 2:
            filtered = row - up
        else:
            p = left + up - upleft
            pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
            predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upleft))
            filtered = row - predictor
        stream += bytes([kind]) + (filtered % 256).astype(np.uint8).tobytes()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    palette = chunk(b"PLTE", bytes(range(256)) * 3) if colour_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + palette
            + chunk(b"IDAT", zlib.compress(bytes(stream))) + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type", [0, 3])
def test_sub_and_up_filtered_rows_take_the_fast_path(tmp_path, monkeypatch, colour_type):
    rng = np.random.default_rng(5)
    pixels = np.repeat(rng.integers(0, 250, (9, 13), dtype=np.uint8), 3, axis=0)[:, :11]
    pixels[4, 3:7] = 255
    mixed = [2, 1, 2, 2, 0, 1, 2, 2, 2] * 3
    patterns = {"sub": [1] * 27, "up": [2] * 27, "none then up": [0] * 16 + [2] * 11, "mixed": mixed}
    # Files with only None/Sub/Up rows never reach OpenCV's decoder, except grey files whose first
    # rows mix filter types (adaptive filtering, which usually brings Paeth rows): those go there at once.
    grey_mixed = tmp_path / "grey_mixed.png"
    grey_mixed.write_bytes(_png_with_filters(pixels, mixed, 0))
    np.testing.assert_array_equal(read_index_png(grey_mixed), pixels)
    if colour_type == 0:
        del patterns["mixed"]
    monkeypatch.setattr(png.cv2, "imdecode", lambda *a: pytest.fail("fell back to cv2.imdecode"))
    for name, kinds in patterns.items():
        path = tmp_path / f"{name}.png"
        path.write_bytes(_png_with_filters(pixels, kinds, colour_type))
        np.testing.assert_array_equal(read_index_png(path), pixels, err_msg=name)
        with Image.open(path) as check:  # the hand-made file is a valid PNG
            np.testing.assert_array_equal(np.asarray(check), pixels)
    monkeypatch.undo()
    paeth = tmp_path / "paeth.png"
    paeth.write_bytes(_png_with_filters(pixels, [4, 1, 2] * 9, colour_type))
    np.testing.assert_array_equal(read_index_png(paeth), pixels)


def test_grey_pngs_from_common_encoders(tmp_path):
    rng = np.random.default_rng(6)
    label = np.kron(rng.integers(0, 21, (15, 20)), np.ones((25, 25))).astype(np.uint8)
    label[rng.random(label.shape) < 0.01] = 255
    cv2.imwrite(str(tmp_path / "cv.png"), label)
    Image.fromarray(label, mode="L").save(tmp_path / "pil.png")
    for name in ("cv.png", "pil.png"):
        np.testing.assert_array_equal(read_index_png(tmp_path / name), label)
