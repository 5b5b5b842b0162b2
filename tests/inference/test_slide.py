"""Sliding-window inference (issue 14) against a plain re-implementation of its semantics written here."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers import spec_of
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor
from utils.inference.slide import SlideOptions, resize_rows, slide_predict, slide_rows, window_starts


class FakeNet:
    """A tiny deterministic 'network': a 3x3 convolution (zero padded, so a pixel's output depends on where its
    window lies) plus a term from the window's mean colour (so every window sees its own context)."""

    def __init__(self, channels: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, 3, 3, 3, generator=gen)
        self.context = torch.randn(channels, 3, generator=gen) * 3
        self.device = torch.device("cpu")
        self.calls: list[int] = []

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls.append(batch.shape[0])
        out = F.conv2d(batch, self.weight, padding=1)
        return out + (batch.mean((2, 3)) @ self.context.T)[:, :, None, None]


def photo(height: int, width: int, seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (height // 6 + 1, width // 6 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def make_predictor(net: FakeNet, window: tuple[int, int], batch_size: int, **config) -> Predictor:
    config = {"num_classes": net.weight.shape[0], "input_size": list(window), **config}
    return Predictor(None, spec_of(config), InferenceOptions(batch_size=batch_size), backend=net)


def reference_probabilities(net: FakeNet, image: np.ndarray, window: tuple[int, int], overlap: float,
                            binary: bool = False) -> np.ndarray:
    """The issue's semantics as a plain loop: mmsegmentation's window placement, grey padding, numpy sums."""
    height, width = image.shape[:2]
    h, w = window
    stride_h, stride_w = round(h * (1 - overlap)), round(w * (1 - overlap))
    pad_h, pad_w = max(height, h), max(width, w)
    padded = np.full((pad_h, pad_w, 3), 128, dtype=np.uint8)
    padded[:height, :width] = image
    total = np.zeros((net.weight.shape[0], pad_h, pad_w))
    count = np.zeros((pad_h, pad_w))
    for row in range(max(pad_h - h + stride_h - 1, 0) // stride_h + 1):
        for col in range(max(pad_w - w + stride_w - 1, 0) // stride_w + 1):
            y2 = min(row * stride_h + h, pad_h)
            x2 = min(col * stride_w + w, pad_w)
            y1, x1 = max(y2 - h, 0), max(x2 - w, 0)
            crop = torch.from_numpy(padded[y1:y2, x1:x2].astype(np.float32) / 255).permute(2, 0, 1)[None]
            logits = net(crop)[0].double().numpy()
            if binary:
                probs = 1 / (1 + np.exp(-logits))
            else:
                probs = np.exp(logits - logits.max(0))
                probs /= probs.sum(0)
            total[:, y1:y2, x1:x2] += probs
            count[y1:y2, x1:x2] += 1
    return (total / count)[:, :height, :width]


def stitched(bands) -> tuple[np.ndarray, list[int]]:
    """Concatenate (start, band) pairs, checking that they follow each other without gap or overlap."""
    starts, parts, expected = [], [], 0
    for start, band in bands:
        assert start == expected
        starts.append(start)
        parts.append(band.numpy())
        expected += band.shape[1]
    return np.concatenate(parts, 1), starts


def test_window_starts_follow_mmsegmentation():
    assert window_starts(100, 32, 21) == [0, 21, 42, 63, 68]  # n = (100 - 32 + 20) // 21 + 1 = 5, last moved back
    assert window_starts(64, 32, 32) == [0, 32]
    assert window_starts(32, 32, 21) == [0]
    assert window_starts(33, 32, 21) == [0, 1]


@pytest.mark.parametrize(("size", "overlap", "batch_size"), [
    ((70, 101), 0.33, 1),   # not a multiple of the window in either direction
    ((70, 101), 0.5, 4),    # batches straddle rows of windows
    ((20, 30), 0.33, 2),    # smaller than a window: padded grey, cropped back
    ((20, 130), 0.25, 3),   # shorter than a window but several windows wide
])
def test_slide_matches_the_plain_loop(size, overlap, batch_size):
    net = FakeNet(4)
    window = (32, 48)
    image = photo(*size, seed=size[1])
    predictor = make_predictor(net, window, batch_size)
    expected = reference_probabilities(net, image, window, overlap)
    got, _ = stitched(slide_rows(predictor.engine, image, overlap, progress=False))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-6)
    predictor.slide = SlideOptions(overlap=overlap, progress=False)
    mask = predictor.predict([image])[0]
    assert mask.shape == size and mask.dtype == np.uint8
    assert (mask == expected.argmax(0)).mean() == 1.0
    assert len(np.unique(mask)) > 1


def test_binary_model_uses_sigmoid_and_the_configured_threshold():
    net = FakeNet(1, seed=3)
    image = photo(45, 77, seed=5)
    predictor = make_predictor(net, (32, 32), 2, threshold=0.6)
    predictor.slide = SlideOptions(overlap=0.33, progress=False)
    expected = reference_probabilities(net, image, (32, 32), 0.33, binary=True)[0]
    mask = predictor.predict([image])[0]
    np.testing.assert_array_equal(mask, (expected >= 0.6).astype(np.uint8))
    assert 0 < mask.mean() < 1


@pytest.mark.parametrize("scale", [0.6, 1.7])
def test_scale_resizes_first_and_returns_original_size(scale):
    net = FakeNet(3, seed=1)
    image = photo(53, 90, seed=2)
    window, overlap = (24, 32), 0.33
    predictor = make_predictor(net, window, 3)
    size = (round(90 * scale), round(53 * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(image, size, interpolation=interp)
    small = torch.from_numpy(reference_probabilities(net, scaled, window, overlap)).float()
    expected = F.interpolate(small[None], size=(53, 90), mode="bilinear", align_corners=False)[0].numpy()
    bands = resize_rows(slide_rows(predictor.engine, scaled, overlap, progress=False), scaled.shape[0], (53, 90))
    got, starts = stitched(bands)
    assert len(starts) > 1  # really produced band by band
    np.testing.assert_allclose(got, expected, atol=1e-5)
    mask = slide_predict(predictor.engine, image, SlideOptions(overlap, scale, progress=False))
    top2 = np.sort(expected, 0)[-2:]
    decided = top2[1] - top2[0] > 1e-4
    np.testing.assert_array_equal(mask[decided], expected.argmax(0)[decided])


def test_resize_rows_matches_interpolate_for_any_banding():
    whole = torch.rand(2, 37, 11, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(whole[None], size=(80, 23), mode="bilinear", align_corners=False)[0]
    cuts = [0, 1, 9, 10, 30, 37]
    bands = ((a, whole[:, a:b]) for a, b in itertools.pairwise(cuts))
    got, _ = stitched(resize_rows(bands, 37, (80, 23)))
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)  # float32 rounding, operation order


def test_rows_are_finished_before_later_windows_run():
    net = FakeNet(2)
    image = photo(100, 100, seed=4)
    predictor = make_predictor(net, (32, 32), 1)
    columns = len(window_starts(100, 32, 21))
    bands = slide_rows(predictor.engine, image, 0.33, progress=False)
    start, band = next(bands)
    # The first band (rows 0..20) leaves as the first window of the second row of windows has run.
    assert (start, band.shape[1]) == (0, 21)
    assert len(net.calls) == columns + 1
    rest = list(bands)
    assert sum(b.shape[1] for _, b in rest) == 100 - 21
    assert len(net.calls) == columns * columns


@pytest.mark.parametrize(("channels", "scale"), [(1, 1.0), (3, 1.0), (3, 0.6)])
def test_predict_with_prob_goes_through_the_windows(channels, scale):
    net = FakeNet(channels, seed=4)
    image = photo(70, 101, seed=7)
    window, overlap = (32, 48), 0.33
    predictor = make_predictor(net, window, 2)
    predictor.slide = SlideOptions(overlap, scale, progress=False)
    scaled = image
    if scale != 1:
        scaled = cv2.resize(image, (round(101 * scale), round(70 * scale)), interpolation=cv2.INTER_AREA)
    probs = torch.from_numpy(reference_probabilities(net, scaled, window, overlap, binary=channels == 1)).float()
    probs = F.interpolate(probs[None], size=(70, 101), mode="bilinear", align_corners=False)[0].numpy()
    # Binary: the foreground probability; multiclass: the probability of the class the mask holds.
    expected = probs[0] if channels == 1 else probs.max(0)
    (mask, prob), = predictor.predict_with_prob([image])
    np.testing.assert_array_equal(mask, predictor.predict([image])[0])
    assert len(np.unique(mask)) > 1
    assert prob.shape == (70, 101) and prob.dtype == torch.float32
    np.testing.assert_allclose(prob.numpy(), expected, atol=1e-5)


def test_tta_is_refused_under_slide():
    predictor = make_predictor(FakeNet(2), (32, 32), 1)
    predictor.slide = SlideOptions(progress=False)
    with pytest.raises(ValueError, match="not available with sliding windows"):
        predictor.predict([photo(40, 40, 0)], tta=True)
    with pytest.raises(ValueError, match="not available with sliding windows"):
        predictor.predict_with_prob([photo(40, 40, 0)], tta=True)


def test_crop_trained_model_defaults_to_slide():
    assert make_predictor(FakeNet(2), (32, 32), 1).slide is None
    assert make_predictor(FakeNet(2), (32, 32), 1, crop_size=[32, 32]).slide == SlideOptions()


def test_non_uint8_input_is_refused_without_statistics():
    predictor = make_predictor(FakeNet(2), (32, 32), 1)
    with pytest.raises(ValueError, match=r"\(H, W, C\) array of uint8"):
        slide_predict(predictor.engine, np.zeros((40, 40, 3), np.float32), SlideOptions(progress=False))
    with pytest.raises(ValueError, match=r"\(H, W, C\) array of uint8"):
        slide_predict(predictor.engine, np.zeros((40, 40), np.uint8), SlideOptions(progress=False))
