"""Crop training sampler (issue 14): rescale, crop position and the cat_max_ratio retries, padding, dataset."""

from __future__ import annotations

import numpy as np
import pytest

from utils.data.crop import CropParams, choose_crop, crop_augment, crop_or_pad, rescale
from utils.data.dataset import SegmentationDataset


class ScriptedRng:
    """Stands in for numpy's Generator in choose_crop: ``integers`` returns the scripted values in order."""

    def __init__(self, positions: list[tuple[int, int]]) -> None:
        self.values = [v for pos in positions for v in pos]
        self.bounds: list[int] = []

    def integers(self, low: int, high: int) -> int:
        self.bounds.append(high)
        value = self.values.pop(0)
        assert low <= value < high
        return value


def halves_label() -> np.ndarray:
    """40x40: columns 0-19 class 1, columns 20-39 class 2, except rows 30-39 of the left half ignored (255)."""
    label = np.full((40, 40), 1, dtype=np.uint8)
    label[:, 20:] = 2
    label[30:, :20] = 255
    return label


def test_first_crop_that_no_class_dominates_is_kept():
    # 20x20 crops at top 0: left 0 holds class 1 only; left 5 gives class 1 exactly 75% (still rejected,
    # mmsegmentation keeps a crop only below the ratio); left 6 gives 70%.
    rng = ScriptedRng([(0, 0), (0, 5), (0, 6), (0, 10)])
    assert choose_crop(halves_label(), (20, 20), rng) == (0, 6)
    assert len(rng.values) == 2  # the fourth position was never drawn
    assert rng.bounds == [21, 21] * 3  # positions 0..40-20 along each axis


def test_ignored_pixels_do_not_count():
    # Top 20, left 0: 200 pixels of class 1 and 200 ignored. Counting 255 as a class this would be two
    # classes at 50% and kept; without it, one class: rejected. Top 20, left 8: class 1 on 120 pixels,
    # class 2 on 160 (57% of the 280 labelled ones): kept.
    rng = ScriptedRng([(20, 0), (20, 8)])
    assert choose_crop(halves_label(), (20, 20), rng) == (20, 8)


def test_gives_up_after_ten_checked_crops():
    uniform = np.zeros((30, 30), dtype=np.uint8)
    positions = [(i, i) for i in range(11)]
    rng = ScriptedRng(positions)
    assert choose_crop(uniform, (16, 16), rng, max_tries=10) == (10, 10)  # the 11th draw, unchecked
    assert rng.values == []


def test_no_retry_without_the_ratio_rule():
    rng = ScriptedRng([(3, 4)])
    assert choose_crop(np.zeros((30, 30), np.uint8), (16, 16), rng, cat_max_ratio=1.0) == (3, 4)


def test_crop_larger_than_the_image_is_padded_grey_and_ignore():
    image = np.arange(20 * 30 * 3, dtype=np.uint32).reshape(20, 30, 3).astype(np.uint8)
    label = np.random.default_rng(0).integers(0, 3, (20, 30), dtype=np.uint8)
    rng = ScriptedRng([(0, 0)])
    top, left = choose_crop(label, (32, 48), rng, cat_max_ratio=1.0)
    assert rng.bounds == [1, 1]  # no room to move: the crop starts at the corner
    crop, label_crop = crop_or_pad(image, label, top, left, (32, 48))
    assert crop.shape == (32, 48, 3) and label_crop.shape == (32, 48)
    np.testing.assert_array_equal(crop[:20, :30], image)
    np.testing.assert_array_equal(label_crop[:20, :30], label)
    assert (crop[20:] == 128).all() and (crop[:, 30:] == 128).all()
    assert (label_crop[20:] == 255).all() and (label_crop[:, 30:] == 255).all()


def test_crop_inside_the_image_is_the_exact_window():
    image = np.random.default_rng(1).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    label = np.random.default_rng(2).integers(0, 3, (50, 60), dtype=np.uint8)
    crop, label_crop = crop_or_pad(image, label, 7, 11, (32, 40))
    np.testing.assert_array_equal(crop, image[7:39, 11:51])
    np.testing.assert_array_equal(label_crop, label[7:39, 11:51])


def test_rescale_keeps_label_values_and_rounds_the_size():
    image = np.random.default_rng(3).integers(0, 256, (21, 33, 3), dtype=np.uint8)
    label = np.random.default_rng(4).integers(0, 3, (21, 33), dtype=np.uint8)
    label[0] = 255
    big_image, big_label = rescale(image, label, 1.5)
    assert big_image.shape == (32, 50, 3) and big_label.shape == (32, 50)  # round(21 * 1.5), round(33 * 1.5)
    assert set(np.unique(big_label)) <= {0, 1, 2, 255}
    twice = rescale(image, label, 2.0)[1]
    np.testing.assert_array_equal(twice[::2, ::2], label)  # nearest: every source pixel becomes a 2x2 block


@pytest.mark.parametrize("scale_range", [(0.5, 0.5), (2.0, 2.0), (0.5, 2.0)])
def test_crop_augment_sizes_and_padding(scale_range):
    image = np.random.default_rng(5).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    label = np.zeros((40, 60), dtype=np.uint8)
    label[:, 30:] = 1
    params = CropParams((32, 48), scale_range)
    rng = np.random.default_rng(6)
    for _ in range(5):
        out, out_label = crop_augment(image, label, params, rng)
        assert out.shape == (32, 48, 3) and out.dtype == np.uint8
        assert out_label.shape == (32, 48) and set(np.unique(out_label)) <= {0, 1, 255}
        if scale_range == (0.5, 0.5):
            # 20x30 after rescaling: the bottom 12 rows are padding, and 18 columns on one side (flip).
            assert (out_label[20:] == 255).all()
            assert (out_label[:, 30:] == 255).all() or (out_label[:, :18] == 255).all()
        if scale_range == (2.0, 2.0):
            assert not (out_label == 255).any()


def test_dataset_yields_crops(voc_dataset_factory):
    root = voc_dataset_factory()
    dataset = SegmentationDataset(root, "train", (32, 40), 3, True, crop=CropParams((32, 40), (1.0, 1.0)))
    image, label = dataset[0]
    assert tuple(image.shape) == (3, 32, 40) and tuple(label.shape) == (32, 40)
    raw_label = dataset.load_pair(0)[1]
    # At ratio 1 the crop is part of the label (or its mirror), padded with 255 where it ran out.
    assert set(np.unique(label.numpy())) <= set(np.unique(raw_label)) | {255}
