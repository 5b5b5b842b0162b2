"""--slide in predict.py and get_miou.py (PyTorch and ONNX Runtime), and train.py --crop-size (issue 14)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import get_miou
import predict
import train
from utils.checkpoint import save_checkpoint
from utils.errors import UserError
from utils.inference import predictor as predictor_module
from utils.inference.options import InferenceOptions, SlideOptions
from utils.inference.predictor import Predictor


def write_photo(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


@pytest.fixture(scope="module")
def crop_checkpoint(predict_checkpoints, tmp_path_factory):
    """The predict fixture's model saved as if trained with --crop-size 64 64."""
    saved = torch.load(predict_checkpoints["ckpt"], map_location="cpu", weights_only=True)
    saved["spec"] = {**saved["spec"], "crop_size": [64, 64]}
    path = tmp_path_factory.mktemp("crop_ckpt") / "crop.pth"
    save_checkpoint(saved, path)
    return path


def test_predict_slide_pytorch_and_onnx_agree(predict_checkpoints, tmp_path):
    write_photo(tmp_path / "in" / "big.png", 150, 110, seed=1)  # not a multiple of the 64x64 window
    write_photo(tmp_path / "in" / "small.png", 40, 50, seed=2)  # smaller than a window
    onnx_path = tmp_path / "static.onnx"
    weights = ["--weights", str(predict_checkpoints["ckpt"])]
    # A static 64x64 export is enough: every window has the input size.
    assert predict.main(predict.parse_args([*weights, "--export-onnx", str(onnx_path)])) == 0
    runs = {"torch": [*weights, "--precision", "fp32"], "onnx": ["--onnx", str(onnx_path)]}
    for name, flags in runs.items():
        assert predict.main(predict.parse_args([*flags, "--slide", str(tmp_path / "in"), "--out",
                                                str(tmp_path / name), "--save-mask", "--batch-size", "3"])) == 0
    reference = Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu", precision="fp32"))
    reference.slide = SlideOptions(progress=False)
    for stem, shape in (("big", (150, 110)), ("small", (40, 50))):
        torch_mask = read_mask(tmp_path / "torch" / f"{stem}_mask.png")
        onnx_mask = read_mask(tmp_path / "onnx" / f"{stem}_mask.png")
        assert torch_mask.shape == onnx_mask.shape == shape
        assert (torch_mask == onnx_mask).mean() >= 0.999
        image = np.asarray(Image.open(tmp_path / "in" / f"{stem}.png").convert("RGB"))
        np.testing.assert_array_equal(torch_mask, reference.predict([image])[0])
    letterboxed = Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu", precision="fp32"))
    big = np.asarray(Image.open(tmp_path / "in" / "big.png").convert("RGB"))
    assert (letterboxed.predict([big])[0] != read_mask(tmp_path / "torch" / "big_mask.png")).any()


def test_get_miou_defaults_to_slide_for_a_crop_trained_model(crop_checkpoint, voc_dataset_factory, tmp_path):
    rng = np.random.default_rng(0)
    pairs = {f"s{i}": (cv2.resize(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (150, 100)),
                       rng.integers(0, 3, (100, 150), dtype=np.uint8)) for i in range(2)}
    root = voc_dataset_factory(pairs, {"val": list(pairs)})
    outs = {}
    for name, extra in (("default", []), ("no_slide", ["--no-slide"]), ("scaled", ["--scale", "0.7"])):
        out = tmp_path / name
        assert get_miou.main(get_miou.parse_args(["--weights", str(crop_checkpoint), "--data-root", str(root),
                                                  "--out", str(out), "--device", "cpu", "--no-progress",
                                                  *extra])) == 0
        outs[name] = read_mask(out / "detection-results" / "s0.png")
        assert json.loads((out / "metrics.json").read_text())["accuracy"] is not None
    predictor = Predictor.from_weights(crop_checkpoint, InferenceOptions(device="cpu"))
    assert predictor.slide == SlideOptions()
    image = np.asarray(Image.open(root / "JPEGImages" / "s0.png").convert("RGB"))
    np.testing.assert_array_equal(outs["default"], predictor.predict([image])[0])
    predictor.slide = None
    np.testing.assert_array_equal(outs["no_slide"], predictor.predict([image])[0])
    assert outs["scaled"].shape == (100, 150)
    assert (outs["default"] != outs["no_slide"]).any()


@pytest.mark.parametrize(("flags", "message"), [
    (["--slide", "--overlap", "1"], "--overlap 1.0: must lie in"),
    (["--slide", "--scale", "0"], "--scale 0.0: must be a positive factor"),
    (["--overlap", "0.5"], "add --slide"),
    (["--slide", "--tta"], "--tta is not available with sliding windows"),
])
def test_bad_slide_flags(predict_checkpoints, tmp_path, flags, message):
    write_photo(tmp_path / "a.png", 64, 64, seed=0)
    with pytest.raises(UserError, match=message):
        predict.main(predict.parse_args(["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "a.png"),
                                         "--out", str(tmp_path / "out"), *flags]))


def test_tta_on_a_crop_model_suggests_no_slide(crop_checkpoint, voc_dataset_factory, tmp_path):
    with pytest.raises(UserError, match="on by default for a model trained on crops.*--no-slide"):
        get_miou.main(get_miou.parse_args(["--weights", str(crop_checkpoint), "--data-root",
                                           str(voc_dataset_factory()), "--out", str(tmp_path), "--tta"]))


def test_crop_training_records_the_crop_and_evaluates_by_sliding(train_data_root, tmp_path, monkeypatch):
    slid = []
    original = predictor_module.slide_predict

    def counting(predictor, image, options):
        slid.append(image.shape[:2])
        return original(predictor, image, options)

    monkeypatch.setattr(predictor_module, "slide_predict", counting)
    save_dir = tmp_path / "run"
    argv = ["--data-root", str(train_data_root), "--classes", str(train_data_root / "classes.txt"),
            "--crop-size", "48", "64", "--scale-range", "0.75", "1.5", "--epochs", "1", "--freeze-epochs", "0",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--save-dir", str(save_dir)]
    assert train.main(train.parse_args(argv)) == 0
    saved = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert saved["spec"]["crop_size"] == [48, 64] and saved["spec"]["input_size"] == [48, 64]
    assert saved["train"]["scale_range"] == [0.75, 1.5]
    assert len(slid) == 4  # the validation mIoU went through sliding windows, one call per val image
    assert Predictor.from_weights(save_dir / "last.pth", InferenceOptions(device="cpu")).slide == SlideOptions()


@pytest.mark.parametrize(("extra", "message"), [
    (["--crop-size", "48", "64", "--input-size", "64"], "contradicts --crop-size"),
    (["--crop-size", "16", "64"], "at least 32"),
    (["--scale-range", "0.5", "2"], "add --crop-size"),
    (["--crop-size", "48", "64", "--scale-range", "2", "1"], "0 < MIN <= MAX"),
])
def test_bad_crop_flags(train_data_root, tmp_path, extra, message):
    with pytest.raises(UserError, match=message):
        train.parse_args(["--data-root", str(train_data_root), "--save-dir", str(tmp_path / "run"), *extra])
