"""Tests of utils/evaluation/report.py: the table, the summary line and the report files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.evaluation.test_confusion import HAND_ACCURACY, HAND_FWIOU, HAND_MATRIX, HAND_MIOU, HAND_MPA, HAND_NAMES
from utils.evaluation.report import format_percent, format_summary, format_table, write_report
from utils.evaluation.scores import compute_scores


def test_table_and_summary_show_n_a_for_undefined():
    scores = compute_scores(HAND_MATRIX)
    table = format_table(scores, HAND_NAMES).splitlines()
    assert table[0].split()[:5] == ["class", "IoU", "Recall", "Prec.", "Dice"]
    assert table[2].split() == ["background", "50.00", "50.00", "100.00", "66.67", "4"]
    assert table[4].split() == ["dog", "0.00", "n/a", "0.00", "0.00", "0"]
    assert table[5].split() == ["bird", "n/a", "n/a", "n/a", "n/a", "0"]
    summary = format_summary(scores)
    assert "mIoU 36.67%" in summary and "mPA 62.50%" in summary and "accuracy 62.50%" in summary
    assert "fwIoU 55.00%" in summary and "1 class(es)" in summary
    with pytest.raises(ValueError):
        format_table(scores, HAND_NAMES[:3])


def test_percent_is_n_a_for_nan_and_for_the_none_of_json_rows():
    assert format_percent(0.123456) == "12.35"
    assert format_percent(1.0) == "100.00"
    assert format_percent(float("nan")) == "n/a"
    assert format_percent(None) == "n/a"
    assert format_percent(0.5, "%") == "50.00%"
    assert format_percent(float("nan"), "%") == "n/a"  # no "n/a%"


def test_summary_of_an_empty_matrix_says_n_a_without_a_percent_sign():
    summary = format_summary(compute_scores(np.zeros((3, 3), dtype=np.int64)))
    assert "mIoU n/a " in summary and "fwIoU n/a" in summary and "n/a%" not in summary


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
                                      "dice": None, "f1": None, "gt_pixels": 0, "pred_pixels": 0}
    assert report["per_class"][2] == {"name": "dog", "iou": 0.0, "recall": None, "precision": 0.0,
                                      "dice": 0.0, "f1": 0.0, "gt_pixels": 0, "pred_pixels": 2}
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


def test_dice_column_matches_a_pixel_loop(tmp_path):
    """Per-class Dice of random predictions = 2|P and G| / (|P| + |G|), counted pixel by pixel here."""
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, 500)
    pred = np.where(rng.random(500) < 0.6, gt, rng.integers(0, 4, 500))
    gt[:40] = 255  # ignored pixels count nowhere
    matrix = np.zeros((4, 4), np.int64)
    for g, p in zip(gt, pred, strict=True):
        if g != 255:
            matrix[g, p] += 1
    expected = []
    for c in range(4):
        both = sum(1 for g, p in zip(gt, pred, strict=True) if g == c and p == c)
        size_p = sum(1 for g, p in zip(gt, pred, strict=True) if g != 255 and p == c)
        size_g = sum(1 for g in gt if g == c)
        expected.append(2 * both / (size_p + size_g))
    names = ["a", "b", "c", "d"]
    scores = compute_scores(matrix)
    write_report(scores, matrix, names, tmp_path)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert [row["dice"] for row in report["per_class"]] == pytest.approx(expected, rel=1e-12)
    table = format_table(scores, names).splitlines()
    assert [float(line.split()[4]) for line in table[2:]] == pytest.approx([100 * e for e in expected], abs=0.006)
