"""Tests of utils.metrics against confusion matrices and scores worked out by hand."""

import csv
import json
import math

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from utils import metrics
from utils.data import save_label
from utils.errors import UserError
from utils.metrics import (
    ConfusionMatrix,
    _count_pairs_torch,
    compute_scores,
    format_summary,
    format_table,
    read_index_png,
    score_folders,
    write_report,
)

# A 2x5 example with 4 classes, scored by hand:
#   valid (gt, pred) pairs: (0,0) (0,0) (0,2) (1,1) (1,1) | (0,1) (1,1) (1,2); two gt=255 pixels ignored
#   (their predictions 3 and 0 must not count, so class 3 is absent from ground truth AND prediction).
HAND_GT = np.array([[0, 0, 0, 1, 1], [0, 1, 1, 255, 255]], dtype=np.uint8)
HAND_PRED = np.array([[0, 0, 2, 1, 1], [1, 1, 2, 3, 0]], dtype=np.uint8)
HAND_MATRIX = np.array([[2, 1, 1, 0], [0, 3, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
HAND_NAMES = ["background", "cat", "dog", "bird"]
# IoU: class 0 = 2/(4+2-2); class 1 = 3/(4+4-3); class 2 is absent from gt but predicted: 0/(0+2-0) = 0,
# and it counts in the mean; class 3 never appears: undefined, left out of the mean.
HAND_IOU = [0.5, 0.6, 0.0, math.nan]
HAND_RECALL = [0.5, 0.75, math.nan, math.nan]
HAND_PRECISION = [1.0, 0.75, 0.0, math.nan]
HAND_F1 = [4 / 6, 0.75, 0.0, math.nan]
HAND_MIOU = (0.5 + 0.6 + 0.0) / 3
HAND_MPA = (0.5 + 0.75) / 2
HAND_ACCURACY = 5 / 8
HAND_FWIOU = 4 / 8 * 0.5 + 4 / 8 * 0.6


def assert_same(actual, expected):
    np.testing.assert_allclose(np.asarray(actual, dtype=float), np.asarray(expected, dtype=float),
                               rtol=1e-12, equal_nan=True)


def test_hand_computed_matrix_and_scores():
    cm = ConfusionMatrix(4)
    # Streaming: two updates (numpy and torch) add up to the whole image.
    cm.update(HAND_PRED[:1], HAND_GT[:1])
    cm.update(torch.from_numpy(HAND_PRED[1:]), torch.from_numpy(HAND_GT[1:]))
    assert cm.matrix.dtype == torch.int64
    np.testing.assert_array_equal(cm.numpy(), HAND_MATRIX)
    scores = cm.scores()
    assert_same(scores.iou, HAND_IOU)
    assert_same(scores.recall, HAND_RECALL)
    assert_same(scores.precision, HAND_PRECISION)
    assert_same(scores.f1, HAND_F1)
    assert scores.miou == pytest.approx(HAND_MIOU, rel=1e-12)
    assert scores.mpa == pytest.approx(HAND_MPA, rel=1e-12)
    assert scores.accuracy == pytest.approx(HAND_ACCURACY, rel=1e-12)
    assert scores.fwiou == pytest.approx(HAND_FWIOU, rel=1e-12)
    np.testing.assert_array_equal(scores.gt_pixels, [4, 4, 0, 0])
    np.testing.assert_array_equal(scores.pred_pixels, [2, 4, 2, 0])


def test_absent_class_is_left_out_of_the_mean_not_counted_as_zero():
    # Perfect on classes 0 and 1; class 2 exists in the model but not in this data.
    scores = compute_scores(np.array([[2, 0, 0], [0, 2, 0], [0, 0, 0]]))
    assert math.isnan(scores.iou[2]) and math.isnan(scores.recall[2]) and math.isnan(scores.precision[2])
    assert scores.miou == 1.0  # the original's max(denominator, 1) would give (1 + 1 + 0) / 3
    gt = np.array([[0, 0, 1, 1]], dtype=np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(gt, gt)
    assert cm.scores().miou == 1.0


def test_pixels_at_255_are_ignored():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1, 2, 2]]), np.array([[255, 255, 255, 255]], dtype=np.uint8))
    assert int(cm.matrix.sum()) == 0
    scores = cm.scores()
    assert math.isnan(scores.miou) and math.isnan(scores.accuracy)
    cm.update(np.array([[1, 2]]), np.array([[1, 255]], dtype=np.uint8))
    np.testing.assert_array_equal(cm.numpy(), [[0, 0, 0], [0, 1, 0], [0, 0, 0]])


def test_prediction_of_a_class_absent_from_ground_truth_lowers_precision_and_enters_the_mean():
    gt = np.array([[0, 0, 0, 0]], dtype=np.uint8)
    pred = np.array([[0, 0, 0, 1]], dtype=np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    scores = cm.scores()
    assert scores.precision[1] == 0.0 and scores.iou[1] == 0.0 and math.isnan(scores.recall[1])
    assert scores.iou[0] == 0.75 and scores.precision[0] == 1.0
    assert math.isnan(scores.iou[2])
    assert scores.miou == pytest.approx((0.75 + 0.0) / 2)
    assert scores.mpa == 0.75  # recall of class 1 is undefined (no ground truth), so not in mPA


def test_perfect_prediction_gives_one_everywhere():
    gt = np.random.default_rng(0).integers(0, 4, (7, 9)).astype(np.uint8)
    gt[0] = 255
    cm = ConfusionMatrix(4)
    cm.update(np.where(gt == 255, 3, gt), gt)
    scores = cm.scores()
    for values in (scores.iou, scores.recall, scores.precision, scores.f1):
        assert np.all(values == 1.0)
    assert scores.miou == scores.mpa == scores.accuracy == scores.fwiou == 1.0


def test_bad_updates_raise():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        cm.update(np.array([[0, 3]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 3)), np.zeros((3, 2)))
    assert int(cm.matrix.sum()) == 0


def test_torch_device_path_matches_numpy_path():
    """The tensor code used on CUDA, run on the CPU (and on CUDA when there is one)."""
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 5, (2, 33, 17)).astype(np.uint8)
    gt[:, :3] = 255
    pred = rng.integers(0, 5, gt.shape).astype(np.uint8)
    cm = ConfusionMatrix(5)
    cm.update(pred, gt)
    torch_counts = _count_pairs_torch(torch.from_numpy(pred), torch.from_numpy(gt), 5)
    np.testing.assert_array_equal(torch_counts.numpy(), cm.numpy())
    with pytest.raises(ValueError):
        _count_pairs_torch(torch.tensor([5]), torch.tensor([0]), 5)
    if torch.cuda.is_available():
        gpu = ConfusionMatrix(5, device="cuda")
        gpu.update(torch.from_numpy(pred).cuda(), torch.from_numpy(gt).cuda())
        assert gpu.matrix.is_cuda
        np.testing.assert_array_equal(gpu.numpy(), cm.numpy())


def test_all_reduce_sums_over_a_single_process_group(tmp_path):
    cm = ConfusionMatrix(4)
    cm.update(HAND_PRED, HAND_GT)
    cm.all_reduce()  # not initialised: no-op
    np.testing.assert_array_equal(cm.numpy(), HAND_MATRIX)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                                         world_size=1)
    try:
        cm.all_reduce()
    finally:
        torch.distributed.destroy_process_group()
    np.testing.assert_array_equal(cm.numpy(), HAND_MATRIX)


def test_table_and_summary_show_n_a_for_undefined():
    scores = compute_scores(HAND_MATRIX)
    table = format_table(scores, HAND_NAMES).splitlines()
    assert table[0].split()[:4] == ["class", "IoU", "Recall", "Prec."]
    assert table[2].split() == ["background", "50.00", "50.00", "100.00", "66.67", "4"]
    assert table[4].split() == ["dog", "0.00", "n/a", "0.00", "0.00", "0"]
    assert table[5].split() == ["bird", "n/a", "n/a", "n/a", "n/a", "0"]
    summary = format_summary(scores)
    assert "mIoU 36.67%" in summary and "mPA 62.50%" in summary and "accuracy 62.50%" in summary
    assert "fwIoU 55.00%" in summary and "1 class(es)" in summary
    with pytest.raises(ValueError):
        format_table(scores, HAND_NAMES[:3])


def test_write_report_files(tmp_path):
    scores = compute_scores(HAND_MATRIX)
    paths = write_report(scores, torch.from_numpy(HAND_MATRIX), HAND_NAMES, tmp_path / "report")
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert report["miou"] == pytest.approx(HAND_MIOU, rel=1e-12)
    assert report["mpa"] == pytest.approx(HAND_MPA, rel=1e-12)
    assert report["accuracy"] == pytest.approx(HAND_ACCURACY, rel=1e-12)
    assert report["fwiou"] == pytest.approx(HAND_FWIOU, rel=1e-12)
    assert report["class_names"] == HAND_NAMES and report["num_classes"] == 4
    assert report["per_class"][3] == {"name": "bird", "iou": None, "recall": None, "precision": None,
                                      "f1": None, "gt_pixels": 0, "pred_pixels": 0}
    assert report["per_class"][2] == {"name": "dog", "iou": 0.0, "recall": None, "precision": 0.0,
                                      "f1": 0.0, "gt_pixels": 0, "pred_pixels": 2}
    assert report["per_class"][1]["iou"] == pytest.approx(0.6) and report["per_class"][1]["f1"] == 0.75
    with open(tmp_path / "report" / "confusion_matrix.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["gt \\ pred", *HAND_NAMES]
    assert rows[1] == ["background", "2", "1", "1", "0"]
    assert [row[0] for row in rows[1:]] == HAND_NAMES
    for name in ("mIoU.png", "mPA.png", "Recall.png", "Precision.png", "confusion_matrix.png"):
        with Image.open(tmp_path / "report" / name) as image:
            assert image.format == "PNG" and image.width > 100 and image.height > 100
    assert paths["heatmap"] == tmp_path / "report" / "confusion_matrix.png"


def _write_grey(path, array):
    assert cv2.imwrite(str(path), array)


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
        metrics._palette_as_grey(palette_bytes, metrics._png_chunks(palette_bytes)))
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
    idat = next(begin for kind, begin, _ in metrics._png_chunks(palette_bytes) if kind == b"IDAT")
    broken[idat + 10] ^= 0xFF
    (tmp_path / "broken.png").write_bytes(bytes(broken))
    with pytest.raises(UserError, match="broken.png"):
        read_index_png(tmp_path / "broken.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(UserError, match="junk.png"):
        read_index_png(tmp_path / "junk.png")


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
    fast = metrics._joint_histogram(gt, pred, num_classes)
    monkeypatch.setattr(metrics, "_CALCHIST_MAX_PIXELS", 0)
    slow = metrics._joint_histogram(gt, pred, num_classes)
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
