"""Tests for utils/data/transforms.py: the letterbox and the training augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from utils.data.transforms import augment, letterbox


@pytest.mark.parametrize("shape", [(20, 30), (30, 20), (64, 64), (10, 90), (150, 40)])
def test_letterbox_round_trip_pads_label_with_255(shape):
    h, w = shape
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # Regions of classes 1..4 and no zeros anywhere in the source.
    yy, xx = np.mgrid[0:h, 0:w]
    label = (1 + (xx // 16 + 2 * (yy >= h // 2)) % 4).astype(np.uint8)
    canvas, label_canvas, box = letterbox(image, (64, 64), label)
    assert canvas.shape == (64, 64, 3) and label_canvas.shape == (64, 64)
    assert canvas.dtype == np.uint8 and label_canvas.dtype == np.uint8
    assert 0 not in label_canvas  # padding is never background
    inside = np.zeros((64, 64), bool)
    inside[box.top:box.top + box.height, box.left:box.left + box.width] = True
    assert (label_canvas[~inside] == 255).all() and (canvas[~inside] == 128).all()
    assert (label_canvas[inside] != 255).all()
    # Centred, aspect ratio kept.
    assert abs(box.height / box.width - h / w) < 0.1 + 1 / min(box.height, box.width)
    assert abs(box.top - (64 - box.top - box.height)) <= 1 and abs(box.left - (64 - box.left - box.width)) <= 1
    # Back to the original size: nearest-resized label content matches the source.
    import cv2

    crop = label_canvas[box.top:box.top + box.height, box.left:box.left + box.width]
    back = cv2.resize(crop, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
    assert (back == label).mean() > 0.85
    same, _, same_box = letterbox(image, (h, w))
    assert np.array_equal(same, image) and same_box == (0, 0, h, w)


def test_augmented_labels_keep_only_source_values_and_255():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    label = rng.choice(np.array([1, 3, 7], np.uint8), size=(40, 60))
    seen: set[int] = set()
    for _ in range(60):
        out_image, out_label = augment(image, label, (48, 32), rng)
        assert out_image.shape == (48, 32, 3) and out_image.dtype == np.uint8
        assert out_label.shape == (48, 32) and out_label.dtype == np.uint8
        seen |= set(np.unique(out_label).tolist())
    assert seen <= {1, 3, 7, 255}
    assert {1, 3, 7, 255} <= seen


def test_augment_is_reproducible_for_a_seed():
    image = np.random.default_rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    label = np.ones((30, 50), np.uint8)
    first = augment(image, label, (32, 32), np.random.default_rng(5))
    second = augment(image, label, (32, 32), np.random.default_rng(5))
    third = augment(image, label, (32, 32), np.random.default_rng(6))
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[0], third[0])
