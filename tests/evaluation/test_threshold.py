"""Tests of utils/evaluation/threshold.py: the one-pass threshold sweep against a plain numpy count."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from utils.evaluation.threshold import (
    SWEEP_THRESHOLDS,
    ThresholdSweep,
    best_threshold,
    binary_summary,
    format_binary,
    format_sweep,
    sweep_rows,
    threshold_arg,
)


def _numpy_counts(probs: list[np.ndarray], labels: list[np.ndarray], threshold: float) -> tuple[int, int, int, int]:
    """TP, FP, FN, TN pooled over images, with the rule "foreground where p >= t", ignoring 255."""
    tp = fp = fn = tn = 0
    for p, y in zip(probs, labels, strict=True):
        keep = y != 255
        fg = p[keep] >= np.float32(threshold)
        truth = y[keep] == 1
        tp += int(np.sum(fg & truth))
        fp += int(np.sum(fg & ~truth))
        fn += int(np.sum(~fg & truth))
        tn += int(np.sum(~fg & ~truth))
    return tp, fp, fn, tn


def _random_case(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    probs, labels = [], []
    for h, w in ((17, 23), (40, 31), (8, 64)):
        label = (rng.random((h, w)) < 0.4).astype(np.uint8)
        # Probabilities correlated with the label, plus values exactly on some thresholds.
        p = np.clip(0.35 * label + rng.random((h, w)) * 0.65, 0, 1).astype(np.float32)
        p.ravel()[:19] = np.asarray(SWEEP_THRESHOLDS, np.float32)
        label[0, :5] = 255
        probs.append(p)
        labels.append(label)
    return probs, labels


def test_sweep_counts_equal_a_numpy_count_at_every_threshold():
    probs, labels = _random_case()
    sweep = ThresholdSweep()
    for p, y in zip(probs, labels, strict=True):
        sweep.update(torch.from_numpy(p), y)
    matrices = sweep.matrices()
    assert matrices.shape == (19, 2, 2)
    for k, t in enumerate(SWEEP_THRESHOLDS):
        tp, fp, fn, tn = _numpy_counts(probs, labels, t)
        assert matrices[k].tolist() == [[tn, fp], [fn, tp]], t
    rows = sweep_rows(sweep)
    for row in rows:
        tp, fp, fn, tn = _numpy_counts(probs, labels, row["threshold"])
        assert row["iou"] == pytest.approx(tp / (tp + fp + fn))
        assert row["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert row["precision"] == pytest.approx(tp / (tp + fp))
        assert row["recall"] == pytest.approx(tp / (tp + fn))
        assert row["accuracy"] == pytest.approx((tp + tn) / (tp + fp + fn + tn))
        # Pooled counts: Dice and IoU are tied exactly.
        assert row["dice"] == pytest.approx(2 * row["iou"] / (1 + row["iou"]), rel=1e-12)


def test_best_threshold_is_the_numpy_argmax_of_the_foreground_iou():
    probs, labels = _random_case(seed=4)
    sweep = ThresholdSweep()
    for p, y in zip(probs, labels, strict=True):
        sweep.update(torch.from_numpy(p), torch.from_numpy(y))
    ious = []
    for t in SWEEP_THRESHOLDS:
        tp, fp, fn, _ = _numpy_counts(probs, labels, t)
        ious.append(tp / (tp + fp + fn))
    assert sweep.best() == SWEEP_THRESHOLDS[int(np.argmax(ious))]
    assert 0.3 < sweep.best() < 0.7


def test_perfect_separation_picks_a_threshold_between_the_classes():
    label = np.array([[0, 0, 1, 1, 255]], np.uint8)
    prob = torch.tensor([[0.1, 0.3, 0.72, 0.9, 0.99]])
    sweep = ThresholdSweep()
    sweep.update(prob, label)
    best = sweep.best()
    assert 0.3 < best <= 0.7
    summary = binary_summary(sweep.scores()[SWEEP_THRESHOLDS.index(best)], best)
    assert summary == {"iou": 1.0, "dice": 1.0, "precision": 1.0, "recall": 1.0, "accuracy": 1.0,
                       "threshold": best}


def test_no_foreground_anywhere_falls_back_to_one_half():
    sweep = ThresholdSweep()
    sweep.update(torch.zeros(4, 4), np.zeros((4, 4), np.uint8))
    assert sweep.best() == 0.5
    assert binary_summary(sweep.scores()[0], 0.05)["iou"] is None


def _marked_best(table: str) -> list[str]:
    return [line.split()[0] for line in table.splitlines() if "best IoU" in line]


def test_table_marks_the_threshold_that_best_keeps_on_a_tie():
    # IoU 1 at every threshold in (0.3, 0.72]: the tie goes to 0.5, in the table as in best().
    label = np.array([[0, 0, 1, 1]], np.uint8)
    sweep = ThresholdSweep()
    sweep.update(torch.tensor([[0.1, 0.3, 0.72, 0.9]]), label)
    assert sweep.best() == 0.5
    assert _marked_best(format_sweep(sweep_rows(sweep))) == ["0.50"]
    # Undefined IoUs are skipped; the lower of two ties equally near 0.5 wins.
    thresholds = (0.1, 0.2, 0.4, 0.6, 0.9)
    assert best_threshold(thresholds, [0.7, None, 0.7, 0.7, float("nan")]) == 0.4
    assert best_threshold(thresholds, [0.2, 0.9, 0.7, None, 0.9]) == 0.2


def test_no_defined_iou_marks_no_row_and_keeps_one_half():
    sweep = ThresholdSweep()
    sweep.update(torch.zeros(4, 4), np.zeros((4, 4), np.uint8))
    assert best_threshold(sweep.thresholds, [s.iou[1] for s in sweep.scores()]) is None
    assert sweep.best() == 0.5
    table = format_sweep(sweep_rows(sweep), chosen=0.5)
    assert _marked_best(table) == [] and "n/a" in table


def test_text_outputs_mark_the_best_and_used_rows():
    probs, labels = _random_case()
    sweep = ThresholdSweep()
    for p, y in zip(probs, labels, strict=True):
        sweep.update(torch.from_numpy(p), y)
    rows = sweep_rows(sweep)
    table = format_sweep(rows, chosen=0.5).splitlines()
    assert len(table) == 2 + 19
    assert sum("best IoU" in line for line in table) == 1
    assert [line.split()[0] for line in table if "(used)" in line] == ["0.50"]
    line = format_binary(rows[9])
    assert line.startswith("foreground (threshold 0.5): IoU ") and "Dice" in line


def test_bad_thresholds_and_flag_values_are_refused():
    with pytest.raises(ValueError, match="increase"):
        ThresholdSweep((0.5, 0.2))
    with pytest.raises(ValueError, match="pixels"):
        ThresholdSweep().update(torch.zeros(3), np.zeros(4, np.uint8))
    assert threshold_arg("0.35") == 0.35
    for bad in ("0", "1", "-0.2", "abc", "nan"):
        with pytest.raises(argparse.ArgumentTypeError, match="between 0 and 1"):
            threshold_arg(bad)
