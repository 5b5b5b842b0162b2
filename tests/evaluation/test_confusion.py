"""Tests of utils/evaluation/confusion.py and scores.py against confusion matrices and scores worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils.evaluation.confusion import ConfusionMatrix, _count_pairs_torch
from utils.evaluation.scores import compute_scores

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
