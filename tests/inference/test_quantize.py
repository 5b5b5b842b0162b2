"""The calibrated INT8 export (``predict.py --export-onnx --int8``), its scoring and its use (issue 21)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import get_miou
import predict
from nets.deeplabv3_plus import DeepLab
from nets.spec import ModelSpec
from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from utils.data.io import load_image
from utils.data.transforms import letterbox
from utils.errors import UserError
from utils.inference import quantize
from utils.inference.backends import OnnxBackend
from utils.inference.onnx_export import SPEC_KEY, export_onnx
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor
from utils.inference.quantize import QuantizeOptions, RecordingBackend, int8_dot_flags, quantize_onnx

REPO = Path(__file__).resolve().parents[2]
STEMS = [f"img_{i}" for i in range(6)]


def photo(height: int, width: int, seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A VOC root of six smooth photos larger than the 64x64 window, labels 0..2 with an ignored border;
    train = val = all six."""
    root = tmp_path_factory.mktemp("calib") / "voc"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(1)
    for index, stem in enumerate(STEMS):
        height, width = 70 + 9 * index, 120 - 7 * index
        Image.fromarray(photo(height, width, index)).save(root / "JPEGImages" / f"{stem}.png")
        label = rng.integers(0, 3, (height, width), dtype=np.uint8)
        label[0] = 255
        Image.fromarray(label).save(root / "SegmentationClass" / f"{stem}.png")
    for split in ("train", "val"):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(STEMS) + "\n")
    return root


def export_int8(weights: Path, target: Path, root: Path, *extra: str) -> str:
    """Run predict.py's int8 export and return what it printed."""
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert predict.main(predict.parse_args(["--weights", str(weights), "--export-onnx", str(target), "--int8",
                                                "--calib-data", str(root), *extra])) == 0
    return buffer.getvalue()


@pytest.fixture(scope="module")
def int8_file(predict_checkpoints, data_root, tmp_path_factory) -> tuple[Path, str]:
    target = tmp_path_factory.mktemp("int8") / "model_int8.onnx"
    return target, export_int8(predict_checkpoints["ckpt"], target, data_root)


def images(root: Path) -> list[np.ndarray]:
    return [load_image(root / "JPEGImages" / f"{stem}.png") for stem in STEMS]


def test_int8_file_is_quantized_carries_the_spec_and_agrees_with_fp32(int8_file, predict_checkpoints, data_root):
    path, printed = int8_file
    graph = onnx.load(str(path))
    ops = [node.op_type for node in graph.graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    stored = json.loads({e.key: e.value for e in graph.metadata_props}[SPEC_KEY])
    expected = ModelSpec(num_classes=3, class_names=["background", "cat", "dog"], input_size=(64, 64))
    assert ModelSpec.from_dict(stored) == expected
    # The first and the last convolution stay in float: their weights are plain initializers, not dequantized.
    producers = {out: node.op_type for node in graph.graph.node for out in node.output}
    convs = [node for node in graph.graph.node if node.op_type == "Conv"]
    assert producers.get(convs[0].input[1]) != "DequantizeLinear"
    assert producers.get(convs[-1].input[1]) != "DequantizeLinear"
    assert producers.get(convs[1].input[1]) == "DequantizeLinear"
    # Agreement, computed here from the PyTorch fp32 model and the int8 file on the calibration images.
    pictures = images(data_root)
    fp32 = Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu", precision="fp32"))
    int8 = Predictor.from_onnx(path)
    same = sum(int((a == b).sum()) for a, b in zip(fp32.predict(pictures), int8.predict(pictures), strict=True))
    agreement = same / sum(image.shape[0] * image.shape[1] for image in pictures)
    assert agreement > 0.9
    printed_share = float(re.search(r"pixel agreement with fp32 on the calibration images: ([\d.]+)%", printed)[1])
    assert abs(printed_share - 100 * agreement) < 0.5
    assert "calibrated on 6 image(s) (6 network input(s))" in printed


def test_calibration_tensors_are_the_engines_batches(predict_checkpoints, data_root, tmp_path):
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(predict_checkpoints["model"], fp32, (64, 64))
    recorder = RecordingBackend(OnnxBackend(fp32))
    predictor = Predictor(None, ModelSpec(num_classes=3, input_size=(64, 64)), InferenceOptions(batch_size=4),
                          backend=recorder)
    pictures = images(data_root)[:3]
    predictor.predict(pictures)
    assert len(recorder.recorded) == 3
    for image, tensor in zip(pictures, recorder.recorded, strict=True):
        canvas = letterbox(image, (64, 64))[0]
        assert tensor.shape == (1, 3, 64, 64)
        np.testing.assert_array_equal(tensor[0], canvas.transpose(2, 0, 1).astype(np.float32) / 255)


def test_get_miou_onnx_gives_the_confusion_of_the_models_own_predictions(int8_file, data_root, tmp_path):
    path, _ = int8_file
    assert get_miou.main(get_miou.parse_args(["--onnx", str(path), "--data-root", str(data_root), "--out",
                                              str(tmp_path), "--no-progress", "--device", "cpu"])) == 0
    rows = (tmp_path / "confusion_matrix.csv").read_text().splitlines()[1:]
    scored = np.array([[int(v) for v in row.split(",")[1:]] for row in rows])
    expected = np.zeros((3, 3), dtype=np.int64)
    predictor = Predictor.from_onnx(path)
    for stem, mask in zip(STEMS, predictor.predict(images(data_root)), strict=True):
        label = np.asarray(Image.open(data_root / "SegmentationClass" / f"{stem}.png"))
        keep = label != 255
        expected += np.bincount(label[keep].astype(np.int64) * 3 + mask[keep], minlength=9).reshape(3, 3)
    np.testing.assert_array_equal(scored, expected)


def test_get_miou_refuses_weights_and_onnx_together(int8_file, predict_checkpoints, data_root):
    with pytest.raises(UserError, match="name two models: give one of them"):
        get_miou.main(get_miou.parse_args(["--weights", str(predict_checkpoints["ckpt"]), "--onnx",
                                           str(int8_file[0]), "--data-root", str(data_root)]))


def run_script(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO)


def test_bad_calibration_root_is_one_line_and_keeps_the_existing_file(predict_checkpoints, tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"the user's model")
    result = run_script("predict.py", "--weights", str(predict_checkpoints["ckpt"]), "--export-onnx", str(target),
                        "--int8", "--calib-data", str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --calib-data")
    assert target.read_bytes() == b"the user's model"
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no ImageSets/Segmentation/train.txt and no images"):
        export_int8(predict_checkpoints["ckpt"], target, tmp_path / "empty")


def test_int8_needs_calibration_data_and_an_export():
    result = run_script("predict.py", "--export-onnx", "x.onnx", "--int8")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--calib-data" in result.stderr
    with pytest.raises(UserError, match="--int8 needs --export-onnx"):
        predict.parse_args(["--int8", "--calib-data", "data"])
    with pytest.raises(UserError, match="add --int8"):
        predict.parse_args(["--export-onnx", "x.onnx", "--calib-data", "data"])


def test_a_failed_calibration_leaves_the_existing_file_and_no_temporaries(predict_checkpoints, data_root, tmp_path):
    broken = tmp_path / "images"
    broken.mkdir()
    Image.fromarray(photo(70, 90, 0)).save(broken / "a.png")
    (broken / "b.png").write_bytes(b"not a png")  # fails after the fp32 export, during calibration
    target = tmp_path / "out" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(b"the user's model")
    with pytest.raises(UserError, match="b.png"):
        export_int8(predict_checkpoints["ckpt"], target, broken)
    assert target.read_bytes() == b"the user's model"
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.onnx"]


def test_cpu_flags_decide_the_warning_and_the_weight_range(predict_checkpoints, data_root, tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_vnni\n")
    assert int8_dot_flags(cpuinfo) == {"avx512_vnni"}
    cpuinfo.write_text("processor : 0\nflags : fpu sse avx2\n")
    assert int8_dot_flags(cpuinfo) == set()
    assert int8_dot_flags(tmp_path / "missing") is None
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(predict_checkpoints["model"], fp32, (64, 64), spec=ModelSpec(num_classes=3, input_size=(64, 64)))
    options = QuantizeOptions(data_root, calib_images=2)
    for flags, seven_bits in ((set(), True), ({"avx_vnni"}, False)):
        monkeypatch.setattr(quantize, "int8_dot_flags", lambda flags=flags: flags)
        assert (quantize.int8_warning(options) is not None) == seven_bits
        report = quantize_onnx(fp32, tmp_path / f"{seven_bits}.onnx", options)
        assert report.reduce_range == seven_bits and report.images == 2
        graph = onnx.load(str(tmp_path / f"{seven_bits}.onnx"))
        weights = [onnx.numpy_helper.to_array(t) for t in graph.graph.initializer
                   if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]
        largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
        assert (largest <= 64) == seven_bits


def crop_trained_checkpoint(folder: Path) -> Path:
    torch.manual_seed(2)
    model = DeepLab(num_classes=3, backbone="mobilenet").eval()
    spec = ModelSpec(num_classes=3, input_size=(48, 48), crop_size=(48, 48))
    save_checkpoint({"model": model.state_dict(), "spec": spec.to_dict(), "format": CHECKPOINT_FORMAT},
                    folder / "crop.pth")
    return folder / "crop.pth"


def binary_checkpoint(folder: Path) -> Path:
    torch.manual_seed(0)
    model = DeepLab(1, "mobilenet").eval()
    spec = ModelSpec(num_classes=2, task="binary", input_size=(32, 32), threshold=0.5)
    save_checkpoint({"model": model.state_dict(), "spec": spec.to_dict(), "format": CHECKPOINT_FORMAT},
                    folder / "binary.pth")
    return folder / "binary.pth"


def write_video(path: Path) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 64))
    for index in range(3):
        writer.write(photo(64, 96, index))
    writer.release()


@pytest.mark.parametrize("kind", ["multiclass", "crop", "binary"])
def test_predict_runs_an_int8_file_on_images_folders_and_video(kind, int8_file, data_root, tmp_path):
    if kind == "multiclass":
        path = int8_file[0]
    else:
        weights = crop_trained_checkpoint(tmp_path) if kind == "crop" else binary_checkpoint(tmp_path)
        path = tmp_path / f"{kind}.onnx"
        printed = export_int8(weights, path, data_root)
        windows = int(re.search(r"\((\d+) network input\(s\)\)", printed)[1])
        # The crop-trained model calibrates on the windows of its slide strategy: several per image.
        assert (windows > len(STEMS)) == (kind == "crop")
    out = tmp_path / "out"
    image = data_root / "JPEGImages" / f"{STEMS[0]}.png"
    assert predict.main(predict.parse_args(["--onnx", str(path), str(image), "--out", str(out), "--save-mask"])) == 0
    mask = np.asarray(Image.open(out / f"{STEMS[0]}_mask.png"))
    assert mask.shape == load_image(image).shape[:2] and mask.max() <= 2
    assert predict.main(predict.parse_args(["--onnx", str(path), str(data_root / "JPEGImages"), "--out",
                                            str(out / "folder")])) == 0
    assert sorted(p.stem for p in (out / "folder").iterdir()) == STEMS
    video = tmp_path / "clip.avi"
    write_video(video)
    assert predict.main(predict.parse_args(["--onnx", str(path), "--video", str(video), "--save",
                                            str(out / "clip.mp4")])) == 0
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    capture.release()
    assert frames == 3
    predictor = Predictor.from_onnx(path)
    assert (predictor.slide is not None) == (kind == "crop")
    assert predictor.task.thresholded == (kind == "binary")
