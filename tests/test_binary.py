"""Binary segmentation end to end: 0/255 masks, --label-map, training, get_miou's binary report,
predict.py --save-prob and the binary ONNX export, on a small synthetic dataset on the CPU."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import get_miou
import predict
from train import main as train_main
from train import parse_args as train_args
from utils.checkpoint import load_model
from utils.data.dataset import SegmentationDataset
from utils.data.demo import make_demo_dataset
from utils.data.io import load_image
from utils.data.label_map import parse_label_map
from utils.errors import UserError, run_cli
from utils.evaluation.threshold import SWEEP_THRESHOLDS
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor


@pytest.fixture(scope="module")
def binary_root(tmp_path_factory) -> Path:
    """0/255 masks of the demo shapes (32 train, 8 val, at most 80x64); read-only."""
    return make_demo_dataset(tmp_path_factory.mktemp("binary") / "data", seed=2, num_train=32, num_val=8,
                             size=(80, 64), binary=True)


def _train_flags(root: Path, save_dir: Path, *extra: str) -> list[str]:
    return ["--data-root", str(root), "--task", "binary", "--input-size", "64", "--freeze-epochs", "0",
            "--batch-size", "8", "--workers", "0", "--device", "cpu", "--save-dir", str(save_dir), *extra]


@pytest.fixture(scope="module")
def trained(binary_root, tmp_path_factory) -> Path:
    """A binary model trained from scratch on the 0/255 masks through --label-map 255:1 (32 steps of
    batch 8 at 64x64, the demo's SGD settings); its run folder."""
    save_dir = tmp_path_factory.mktemp("binary_run") / "run"
    status = train_main(train_args(_train_flags(binary_root, save_dir, "--label-map", "255:1", "--epochs", "8",
                                                "--eval-period", "4", "--lr", "0.2")))
    assert status == 0
    return save_dir


def test_demo_masks_are_0_255_and_the_map_makes_them_0_1(binary_root):
    dataset = SegmentationDataset(binary_root, "train", 64, 2, train=False)
    raw = np.array(Image.open(dataset.label_path(0)))
    assert set(np.unique(raw).tolist()) == {0, 255}
    mapped = SegmentationDataset(binary_root, "train", 64, 2, train=False, label_map=parse_label_map("255:1"))
    _, label = mapped.load_pair(0)
    assert np.array_equal(label, (raw == 255).astype(np.uint8))
    assert np.array_equal(np.array(Image.open(dataset.label_path(0))), raw)  # the file is untouched


def test_unmapped_0_255_masks_stop_with_one_line_naming_the_map(binary_root, tmp_path, capsys):
    argv = _train_flags(binary_root, tmp_path / "run", "--epochs", "1")
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda a: train_main(train_args(a)), argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--label-map 255:1" in err and "SegmentationClass" in err
    assert not (tmp_path / "run" / "last.pth").exists()


@pytest.mark.parametrize(("flags", "message"), [
    (["--loss", "ce"], "'ce' does not exist in binary mode; use 'bce'"),
    (["--loss", "bce+foo"], "unknown loss term 'foo'"),
    (["--num-classes", "3"], "a binary model has 2 classes"),
    (["--label-map", "255"], "not of the form SRC:DST"),
])
def test_bad_binary_flags_are_user_errors(binary_root, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        train_args(_train_flags(binary_root, tmp_path / "run", *flags))


def test_binary_classes_file_needs_two_names(binary_root, tmp_path):
    three = tmp_path / "three.txt"
    three.write_text("background\nroad\ncar\n")
    with pytest.raises(UserError, match="exactly two"):
        train_args(_train_flags(binary_root, tmp_path / "run", "--classes", str(three)))
    two = tmp_path / "two.txt"
    two.write_text("ground\nroad\n")
    args = train_args(_train_flags(binary_root, tmp_path / "run", "--classes", str(two), "--label-map", "3:1,*:0"))
    assert args.class_names == ["ground", "road"] and args.num_classes == 2
    assert args.loss == "bce" and args.label_map == "3:1,*:0"


def test_binary_training_learns_the_objects(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["task"] == "binary" and config["label_map"] == "255:1" and config["loss"] == "bce"
    model, saved = load_model(trained / "best.pth")
    assert model.cls_conv.out_channels == 1
    assert saved.task == "binary" and saved.num_classes == 2
    assert saved.threshold in SWEEP_THRESHOLDS
    with open(trained / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == [str(e) for e in range(1, 9)]
    last = rows[-1]
    assert float(last["iou"]) > 0.5, last
    assert float(last["dice"]) == pytest.approx(2 * float(last["iou"]) / (1 + float(last["iou"])), abs=1e-4)


def test_get_miou_binary_report(trained, binary_root, tmp_path):
    out = tmp_path / "report"
    assert get_miou.main(get_miou.parse_args(["--weights", str(trained / "best.pth"), "--data-root",
                                              str(binary_root), "--out", str(out), "--device", "cpu",
                                              "--no-progress"])) == 0
    report = json.loads((out / "metrics.json").read_text())
    _, config = load_model(trained / "best.pth")
    assert report["threshold"] == config.threshold
    assert report["dice"] == pytest.approx(2 * report["iou"] / (1 + report["iou"]), rel=1e-12)
    assert report["iou"] == pytest.approx(report["per_class"][1]["iou"], rel=1e-12)
    assert report["accuracy"] == pytest.approx(report["accuracy"]) and 0 < report["precision"] <= 1
    assert [row["threshold"] for row in report["sweep"]] == list(SWEEP_THRESHOLDS)
    assert (out / "threshold_sweep.png").stat().st_size > 0
    # The sweep's row at the model's threshold is the report itself (same pooled counts).
    row = next(r for r in report["sweep"] if r["threshold"] == report["threshold"])
    assert row["iou"] == pytest.approx(report["iou"], rel=1e-12)

    # --threshold overrides the checkpoint's; the mask written follows it.
    other = tmp_path / "other"
    get_miou.main(get_miou.parse_args(["--weights", str(trained / "best.pth"), "--data-root", str(binary_root),
                                       "--out", str(other), "--device", "cpu", "--no-progress",
                                       "--threshold", "0.95"]))
    high = json.loads((other / "metrics.json").read_text())
    assert high["threshold"] == 0.95
    assert high["iou"] == pytest.approx(next(r for r in high["sweep"] if r["threshold"] == 0.95)["iou"])


def test_save_prob_writes_rounded_probabilities(trained, binary_root, tmp_path):
    image_path = binary_root / "JPEGImages" / "demo_0032.jpg"
    weights = str(trained / "best.pth")
    for bits, top, dtype in ((8, 255, np.uint8), (16, 65535, np.uint16)):
        out = tmp_path / f"out{bits}"
        assert predict.main(predict.parse_args(["--weights", weights, str(image_path), "--out", str(out),
                                                "--save-prob", "--prob-bits", str(bits), "--save-mask",
                                                "--device", "cpu", "--precision", "fp32"])) == 0
        written = np.array(Image.open(out / "demo_0032_prob.png"))
        assert written.dtype == dtype or (bits == 16 and written.dtype == np.int32)
        predictor = Predictor.from_weights(weights, InferenceOptions(device="cpu", precision="fp32"))
        prob = predictor.predict_proba([load_image(image_path)])[0][0].numpy()
        assert np.array_equal(written.astype(np.int64), np.round(prob * np.float32(top)).astype(np.int64))
        mask = np.array(Image.open(out / "demo_0032_mask.png"))
        assert np.array_equal(mask, (prob >= predictor.threshold).astype(np.uint8))


def test_save_prob_of_a_multiclass_model_is_the_predicted_class_probability(predict_checkpoints, tmp_path):
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    predict.main(predict.parse_args(["--weights", str(predict_checkpoints["ckpt"]), str(tmp_path / "x.png"),
                                     "--out", str(tmp_path / "out"), "--save-prob", "--device", "cpu",
                                     "--precision", "fp32"]))
    written = np.array(Image.open(tmp_path / "out" / "x_prob.png"))
    probs = Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu",
                                                                                 precision="fp32")).predict_proba([image])
    expected = np.round(probs[0].numpy().max(axis=0) * np.float32(255))
    assert written.dtype == np.uint8 and np.array_equal(written, expected.astype(np.uint8))


def test_threshold_is_refused_for_a_multiclass_model(predict_checkpoints, tmp_path):
    with pytest.raises(UserError, match="--threshold applies to binary models"):
        predict.main(predict.parse_args(["--weights", str(predict_checkpoints["ckpt"]), "--threshold", "0.3",
                                         str(tmp_path / "x.png"), "--device", "cpu"]))


def test_binary_onnx_outputs_probabilities_and_matches_pytorch(trained, binary_root, tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    weights, path = str(trained / "best.pth"), tmp_path / "binary.onnx"
    assert predict.main(predict.parse_args(["--weights", weights, "--export-onnx", str(path), "--dynamic",
                                            "--no-simplify"])) == 0
    graph = onnx.load(str(path)).graph
    assert [o.name for o in graph.output] == ["probabilities"]
    images = [load_image(binary_root / "JPEGImages" / f"demo_{i:04d}.jpg") for i in (32, 33)]
    torch_predictor = Predictor.from_weights(weights, InferenceOptions(device="cpu", precision="fp32"))
    onnx_predictor = Predictor.from_onnx(path)
    assert onnx_predictor.task.name == "binary" and onnx_predictor.threshold == torch_predictor.threshold
    for a, b in zip(torch_predictor.predict_proba(images), onnx_predictor.predict_proba(images), strict=True):
        assert a.shape[0] == 1 and float(a.min()) >= 0 and float(a.max()) <= 1
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    # predict.py --onnx writes the same probability PNG as PyTorch (within one grey level).
    flags = [str(binary_root / "JPEGImages" / "demo_0032.jpg"), "--save-prob", "--device", "cpu"]
    predict.main(predict.parse_args(["--weights", weights, "--out", str(tmp_path / "pt"), "--precision", "fp32",
                                     *flags]))
    predict.main(predict.parse_args(["--onnx", str(path), "--out", str(tmp_path / "ort"), *flags]))
    pt = np.array(Image.open(tmp_path / "pt" / "demo_0032_prob.png")).astype(int)
    ort = np.array(Image.open(tmp_path / "ort" / "demo_0032_prob.png")).astype(int)
    assert np.abs(pt - ort).max() <= 1


def test_a_bare_one_channel_state_dict_is_a_binary_model(tmp_path):
    from nets.deeplabv3_plus import DeepLab

    torch.manual_seed(0)
    torch.save(DeepLab(1, "mobilenet").eval().state_dict(), tmp_path / "bare.pth")
    predictor = Predictor.from_weights(tmp_path / "bare.pth", InferenceOptions(device="cpu", precision="fp32"),
                                       input_size=[64, 64])
    assert (predictor.task.name, predictor.num_classes, predictor.threshold) == ("binary", 2, 0.5)
    image = (np.random.default_rng(1).random((40, 56, 3)) * 255).astype(np.uint8)
    (mask, prob), = predictor.predict_with_prob([image])
    logits_prob = predictor.predict_proba([image])[0]
    assert logits_prob.shape == (1, 40, 56) and torch.equal(prob, logits_prob[0])
    assert np.array_equal(mask, (prob.numpy() >= 0.5).astype(np.uint8))
    for threshold in (0.2, float(prob.median()), 0.8):
        predictor.threshold = threshold
        expected = (prob.numpy() >= threshold).astype(np.uint8)
        differ = predictor.predict([image])[0] != expected
        # predict() interpolates in another order than predict_proba(): only exact ties may differ.
        assert np.abs(prob.numpy()[differ] - threshold).max(initial=0) < 1e-5
