"""Class maps at the image's size without full-size probabilities (issue 11), against full F.interpolate."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nets.deeplabv3_plus import DeepLab
from nets.task import BINARY, MULTICLASS
from tests.helpers import spec_of
from utils.inference.options import InferenceOptions
from utils.inference.postprocess import average_upsampled_labels, bilinear_taps, upsample_labels
from utils.inference.predictor import Predictor

TIE = 1e-5  # reference top-2 gap below which either class is a correct argmax


def smooth_probabilities(channels: int, height: int, width: int, seed: int = 0, coarse: int = 4) -> torch.Tensor:
    """(C, h, w) probabilities with class regions a few pixels wide, like a network's output."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, channels, height // coarse + 2, width // coarse + 2, generator=generator) * 4
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)[0]
    return logits.sigmoid() if channels == 1 else logits.softmax(0)


def reference(probs: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The definition, computed the plain way: full-size bilinear probabilities (C, H, W)."""
    return F.interpolate(probs[None].double(), size=size, mode="bilinear", align_corners=False)[0]


def assert_argmax_except_ties(got: np.ndarray, full: torch.Tensor) -> None:
    expected = full.argmax(0).numpy()
    differ = got != expected
    assert got.dtype == np.uint8 and got.shape == expected.shape
    if differ.any():
        top2 = full.topk(2, dim=0).values
        gap = (top2[0] - top2[1]).numpy()[differ]
        assert gap.max() < TIE, f"{differ.sum()} pixels differ, largest top-2 gap {gap.max()}"
        # The class chosen is one of the tied maxima.
        rows, cols = np.nonzero(differ)
        chosen = full.numpy()[got[differ].astype(np.int64), rows, cols]
        np.testing.assert_allclose(chosen, full.max(0).values.numpy()[differ], atol=TIE)
    assert differ.mean() < 1e-3


@pytest.mark.parametrize(("channels", "source", "target"), [
    (21, (64, 96), (500, 375)),     # up in both, aspect changes
    (5, (33, 17), (333, 1001)),     # odd sizes, factors 10 and 59
    (3, (40, 40), (41, 39)),        # almost the same size: up one way, down the other
    (4, (100, 80), (31, 23)),       # down by more than 3
    (7, (97, 131), (13, 200)),      # down 7x rows, up columns
    (2, (1, 9), (5, 30)),           # a single source row
    (6, (48, 64), (48, 64)),        # same size: plain argmax
])
def test_upsample_labels_is_argmax_of_full_bilinear(channels, source, target):
    probs = smooth_probabilities(channels, *source, seed=channels)
    got = upsample_labels(probs, target)
    assert_argmax_except_ties(got, reference(probs, target))


def smooth_logits(channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, channels, height // 4 + 2, width // 4 + 2, generator=generator) * 4
    return F.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)[0]


@pytest.mark.parametrize("layout", ["nchw", "channels_last_crop", "channels_last_columns"])
def test_logits_give_the_labels_of_their_softmax(layout):
    """From logits only the disagreeing cells' corners are softmaxed: the map equals the probabilities' map,
    also on cropped channels-last views (the network's letterbox content box) whose rows are not adjacent."""
    logits = smooth_logits(9, 60, 80, seed=5)
    if layout != "nchw":
        canvas = logits[None].contiguous(memory_format=torch.channels_last)[0]
        logits = canvas[:, 7:51, 3:77] if layout == "channels_last_crop" else canvas[:, :, 11:70]
        assert not logits.permute(1, 2, 0).is_contiguous()
    target = (173, 251)
    from_probs = upsample_labels(logits.softmax(0), target)
    np.testing.assert_array_equal(upsample_labels(logits, target, logits=True), from_probs)
    assert_argmax_except_ties(from_probs, reference(logits.softmax(0), target))
    one = logits[:1]
    np.testing.assert_array_equal(upsample_labels(one, target, threshold=0.3, logits=True),
                                  upsample_labels(one.sigmoid(), target, threshold=0.3))


def test_small_chunks_give_the_same_map():
    """Bands of one source row and tiny pixel chunks must not change anything."""
    probs = smooth_probabilities(21, 50, 70, seed=3, coarse=2)
    np.testing.assert_array_equal(upsample_labels(probs, (301, 257), chunk=50),
                                  upsample_labels(probs, (301, 257)))


def test_noisy_maps_with_many_candidate_classes():
    """Pixel-level noise: most cells disagree and many classes can win, the hardest case for pruning."""
    probs = torch.rand(12, 30, 40).softmax(0)
    assert_argmax_except_ties(upsample_labels(probs, (97, 211)), reference(probs, (97, 211)))


def test_numpy_input_and_256_classes():
    probs = smooth_probabilities(256, 12, 10, seed=1, coarse=2)
    full = reference(probs, (37, 29))
    assert_argmax_except_ties(upsample_labels(probs.numpy(), (37, 29)), full)
    assert upsample_labels(probs, (37, 29)).max() > 200  # high class indices really occur
    with pytest.raises(ValueError, match="256"):
        upsample_labels(torch.rand(257, 4, 4), (8, 8))


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.8])
def test_one_channel_thresholds_the_bilinear_probability(threshold):
    probs = smooth_probabilities(1, 45, 61, seed=7)
    for target in ((300, 410), (20, 33)):
        full = reference(probs, target)[0].numpy()
        got = upsample_labels(probs, target, threshold=threshold)
        expected = (full >= threshold).astype(np.uint8)
        differ = got != expected
        assert np.abs(full[differ] - threshold).max(initial=0) < TIE
        assert 0 < expected.mean() < 1  # both classes present


def test_bilinear_taps_reproduce_interpolate():
    # float32 values: the taps follow PyTorch's float32 kernel (a float64 input uses float64 coordinates).
    values = torch.rand(23, generator=torch.Generator().manual_seed(0))
    for target in (5, 23, 24, 100):
        taps = bilinear_taps(23, target)
        mine = (1 - taps.frac) * values.numpy()[taps.first] + taps.frac * values.numpy()[taps.second]
        expected = F.interpolate(values[None, None], size=target, mode="linear", align_corners=False)[0, 0]
        np.testing.assert_allclose(mine, expected.numpy(), rtol=0, atol=1e-6)
        assert (np.diff(taps.first) >= 0).all() and taps.second.max() <= 22


def test_average_of_maps_of_different_sizes():
    maps = [smooth_probabilities(5, 30, 40, seed=1), smooth_probabilities(5, 45, 60, seed=2),
            smooth_probabilities(5, 22, 31, seed=3)]
    target = (123, 157)
    mean = sum(reference(m, target) for m in maps) / len(maps)
    assert_argmax_except_ties(average_upsampled_labels(maps, target), mean)
    np.testing.assert_array_equal(average_upsampled_labels(maps, target, chunk=100),
                                  average_upsampled_labels(maps, target))
    binary = [smooth_probabilities(1, 30, 40, seed=4), smooth_probabilities(1, 20, 20, seed=5)]
    full = (reference(binary[0], target) + reference(binary[1], target))[0].numpy() / 2
    got = average_upsampled_labels(binary, target, threshold=0.4)
    assert np.abs(full[got != (full > 0.4)] - 0.4).max(initial=0) < TIE
    with pytest.raises(ValueError, match="at least one"):
        average_upsampled_labels([], target)


def test_task_activations_softmax_any_layout_and_sigmoid_for_binary():
    logits = torch.randn(2, 5, 7, 9)
    expected = torch.exp(logits) / torch.exp(logits).sum(1, keepdim=True)
    torch.testing.assert_close(MULTICLASS.activation(logits), expected)
    torch.testing.assert_close(MULTICLASS.activation(logits.contiguous(memory_format=torch.channels_last)), expected)
    torch.testing.assert_close(MULTICLASS.activation(logits[:, :, 1:5, 2:8]), expected[:, :, 1:5, 2:8])
    one = logits[:, :1]
    torch.testing.assert_close(BINARY.activation(one), 1 / (1 + torch.exp(-one)))


def test_predictor_masks_match_full_probabilities_for_tta():
    torch.manual_seed(0)
    predictor = Predictor(DeepLab(4, "mobilenet").eval(), spec_of({"num_classes": 4, "input_size": [64, 64]}),
                          InferenceOptions(device="cpu", precision="fp32"))
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    for tta in (False, True):
        full = predictor.predict_proba([image], tta=tta)[0].double()
        assert_argmax_except_ties(predictor.predict([image], tta=tta)[0], full)


def test_one_channel_model_is_thresholded():
    torch.manual_seed(1)
    model = DeepLab(1, "mobilenet").eval()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (70, 50, 3), dtype=np.uint8)
    for threshold in (0.5, 0.45):
        predictor = Predictor(model, spec_of({"num_classes": 1, "input_size": [64, 64], "threshold": threshold}),
                              InferenceOptions(device="cpu", precision="fp32"))
        full = predictor.predict_proba([image])[0][0].numpy()
        assert full.min() >= 0 and full.max() <= 1  # sigmoid, not a one-class softmax
        got = predictor.predict([image])[0]
        assert np.abs(full[got != (full >= threshold)] - threshold).max(initial=0) < TIE
