"""Predictor pipeline, BatchNorm folding and the visualisation helpers (issue 5)."""

from __future__ import annotations

import copy
from dataclasses import replace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from nets.deeplabv3_plus import DeepLab
from tests.helpers import spec_of
from utils.data.io import voc_palette
from utils.data.transforms import letterbox
from utils.errors import UserError
from utils.inference import visualize
from utils.inference.fuse import fuse_bn
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor
from utils.inference.visualize import class_counts, colorize, make_palette, mix, save_index_png, write_counts_csv


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def predictor(predict_checkpoints):
    return Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu"))


def test_predict_sizes_probabilities_and_config(predictor):
    images = [photo(64, 96), photo(100, 50, 1), photo(33, 33, 2)]
    probs = predictor.predict_proba(images)
    assert [tuple(p.shape) for p in probs] == [(3, 64, 96), (3, 100, 50), (3, 33, 33)]
    for p in probs:
        assert p.dtype == torch.float32
        torch.testing.assert_close(p.sum(0), torch.ones(p.shape[1:]), atol=1e-5, rtol=0)
    masks = predictor.predict(images)
    assert [m.shape for m in masks] == [(64, 96), (100, 50), (33, 33)]
    assert all(m.dtype == np.uint8 for m in masks)
    for mask, p in zip(masks, probs, strict=True):
        np.testing.assert_array_equal(mask, p.argmax(0).numpy())
    assert (predictor.num_classes, predictor.class_names, predictor.input_size) == (
        3, ["background", "cat", "dog"], (64, 64))


def test_pipeline_matches_explicit_steps(predict_checkpoints, predictor):
    """letterbox -> forward -> crop the padding -> bilinear resize of probabilities -> argmax."""
    image = photo(40, 90, 3)
    canvas, _, box = letterbox(image, (64, 64))
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        prob = predict_checkpoints["model"](x).softmax(1)
    crop = prob[:, :, box.top:box.top + box.height, box.left:box.left + box.width]
    expected = F.interpolate(crop, size=(40, 90), mode="bilinear", align_corners=False)[0]
    got = predictor.predict_proba([image])[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert box.height < 64  # the test really exercises the padding crop


def test_batch_size_does_not_change_results(predict_checkpoints):
    images = [photo(64, 96, i) for i in range(5)]
    one, four = (Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu", batch_size=n))
                 .predict_proba(images) for n in (1, 4))
    for a, b in zip(one, four, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def with_tta(predictor: Predictor, scales: tuple[float, ...] = (0.75, 1.0, 1.25), flip: bool = True) -> Predictor:
    """The same model and spec with test-time augmentation over ``scales`` (and ``flip``)."""
    options = replace(predictor.options, tta=True, tta_scales=scales, flip=flip)
    return Predictor(None, predictor.spec, options, backend=predictor.backend)


def test_tta_averages_scales_and_flips(predictor):
    image = photo(64, 96)
    plain = predictor.predict_proba([image])[0]
    torch.testing.assert_close(with_tta(predictor, (1.0,), flip=False).predict_proba([image])[0], plain)
    tta = with_tta(predictor).predict_proba([image])[0]
    assert tta.shape == plain.shape
    torch.testing.assert_close(tta.sum(0), torch.ones(64, 96), atol=1e-5, rtol=0)
    assert not torch.allclose(tta, plain)
    # A flipped image under flip-TTA gives the mirrored probabilities.
    flipped = with_tta(predictor, (1.0,)).predict_proba([np.ascontiguousarray(image[:, ::-1])])[0]
    torch.testing.assert_close(flipped.flip(2), with_tta(predictor, (1.0,)).predict_proba([image])[0],
                               atol=1e-5, rtol=1e-4)


def test_bare_state_dict_predicts_like_our_checkpoint(predict_checkpoints, predictor):
    bare = Predictor.from_weights(predict_checkpoints["bare"], InferenceOptions(device="cpu"), input_size=[64, 64])
    assert bare.num_classes == 3 and bare.spec.backbone == "mobilenet"
    images = [photo(64, 96, 5), photo(70, 40, 6)]
    for a, b in zip(bare.predict(images), predictor.predict(images), strict=True):
        np.testing.assert_array_equal(a, b)


def test_overrides_and_class_mismatch(predict_checkpoints):
    small = Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu"), input_size=[48, 80],
                                   downsample_factor=8)
    assert small.input_size == (48, 80) and small.spec.downsample_factor == 8
    with pytest.raises(UserError, match="3 classes"):
        Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu"), num_classes=4,
                               class_names=list("abcd"))


def test_predictor_leaves_the_given_model_alone(predict_checkpoints):
    model = copy.deepcopy(predict_checkpoints["model"]).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    predictor = Predictor(model, spec_of({"num_classes": 3, "input_size": [64, 64]}), InferenceOptions(device="cpu"))
    predictor.predict([photo(64, 64)])
    assert model.training
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], atol=0, rtol=0)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.backend.model.modules())


@pytest.mark.parametrize("backbone", ["mobilenet", "xception"])
def test_bn_folding_is_exact(backbone):
    torch.manual_seed(1)
    model = DeepLab(4, backbone).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    fused = copy.deepcopy(model)
    count = fuse_bn(fused)
    assert count == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.rand(2, 3, 72, 56)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="eval"):
        fuse_bn(DeepLab(2).train())


def test_palette_voc_then_distinct():
    assert make_palette(21).ravel().tolist() == voc_palette()[:63]
    for n in (22, 60, 150):
        palette = make_palette(n)
        assert palette.shape == (n, 3)
        assert len({tuple(c) for c in palette}) == n
        assert palette[0].tolist() == [0, 0, 0]


def test_mix_modes_differ_as_specified():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:15, 10:25] = 2
    mask[0:3, 0:3] = 1
    palette = make_palette(3)
    colour = mix(image, mask, "mask", palette=palette)
    np.testing.assert_array_equal(colour, palette[mask])
    blend = mix(image, mask, "blend", 0.7, palette)
    expected = image.astype(np.float64) * 0.3 + palette[mask].astype(np.float64) * 0.7
    assert np.abs(blend.astype(np.float64) - expected).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(mix(image, mask, "blend", 0.0, palette), image)
    cutout = mix(image, mask, "cutout", palette=palette)
    np.testing.assert_array_equal(cutout[mask != 0], image[mask != 0])
    assert (cutout[mask == 0] == 0).all()
    assert not np.array_equal(blend, colour) and not np.array_equal(blend, cutout)
    with pytest.raises(ValueError):
        mix(image, mask, "sparkle")


@pytest.mark.parametrize("alpha", [0.7, 0.5, 1 / 3, 0.0, 1.0])
def test_blend_is_the_rounded_weighted_sum(alpha, monkeypatch):
    """image * (1 - a) + colour * a to the nearest level, also when the image is worked out in several
    bands of rows (the last one shorter); a = 0 and a = 1 give the image and the colour mask exactly."""
    monkeypatch.setattr(visualize, "BAND_PIXELS", 517 * 40)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (301, 517, 3), dtype=np.uint8)
    mask = rng.integers(0, 25, (301, 517), dtype=np.uint8)
    palette = make_palette(22)  # index 22..24 are beyond the palette: black
    colour = colorize(mask, palette)
    exact = image.astype(np.float64) * (1.0 - alpha) + colour.astype(np.float64) * alpha
    got = mix(image, mask, "blend", alpha, palette)
    assert got.dtype == np.uint8 and got.shape == image.shape
    assert np.abs(got - exact).max() <= 0.5 + 1e-3
    if alpha in (0.0, 1.0):
        np.testing.assert_array_equal(got, image if alpha == 0.0 else colour)


def test_counts_and_index_png(tmp_path):
    mask = np.random.default_rng(0).integers(0, 3, (17, 23), dtype=np.uint8)
    counts = class_counts([mask, mask], 4)
    assert counts.sum() == 2 * 17 * 23 and counts[3] == 0
    path = write_counts_csv(counts, ["a", "b", "c", "d"], tmp_path / "c.csv")
    rows = path.read_text().splitlines()
    assert rows[0] == "class,index,pixels,share" and len(rows) == 5
    assert abs(sum(float(r.split(",")[3]) for r in rows[1:]) - 1.0) < 1e-5
    save_index_png(mask, tmp_path / "m.png", make_palette(3))
    with Image.open(tmp_path / "m.png") as saved:
        assert saved.mode == "P"
        np.testing.assert_array_equal(np.asarray(saved), mask)
        assert saved.getpalette()[3:6] == list(make_palette(3)[1])
    np.testing.assert_array_equal(colorize(mask, make_palette(3)), make_palette(3)[mask])


def test_precision_choices(predict_checkpoints, monkeypatch):
    from utils import device as module

    cpu = torch.device("cpu")
    assert module.resolve_precision("auto", cpu) == torch.float32
    assert module.resolve_precision("bf16", cpu) == torch.bfloat16
    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: True)
    assert module.resolve_precision("fastest", cpu) == torch.bfloat16
    monkeypatch.setattr(module, "cpu_has_native_bf16", lambda: False)
    assert module.resolve_precision("fastest", cpu) == torch.float32
    with pytest.raises(UserError, match="fp16"):
        module.resolve_precision("fp16", cpu)
    with pytest.raises(UserError, match="precision"):
        module.resolve_precision("fp8", cpu)
    bf16 = Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu", precision="bf16"))
    probs = bf16.predict_proba([photo(64, 96)])[0]
    assert probs.dtype == torch.float32 and probs.shape == (3, 64, 96)
    torch.testing.assert_close(probs.sum(0), torch.ones(64, 96), atol=1e-4, rtol=0)


def test_more_classes_than_uint8_masks_hold_are_refused_by_both_mask_paths():
    class Backend:
        device = torch.device("cpu")

        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros(x.shape[0], 257, *x.shape[2:])

    predictor = Predictor(None, spec_of({"num_classes": 257, "input_size": [32, 32]}), backend=Backend())
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    for method in (predictor.predict, predictor.predict_with_prob):
        with pytest.raises(ValueError, match="256 classes"):
            method([image])
