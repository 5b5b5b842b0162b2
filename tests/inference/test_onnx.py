"""ONNX export (dynamic shapes, verification, metadata) and ``predict.py --onnx`` (issue 5)."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
import torch

from nets.spec import SPEC_VERSION, ModelSpec
from predict import main, parse_args
from utils.errors import UserError
from utils.inference.onnx_export import export_onnx, make_session
from utils.inference.options import InferenceOptions, SlideOptions
from utils.inference.predictor import Predictor


def photo(height: int, width: int, seed: int) -> np.ndarray:
    small = np.random.default_rng(seed).integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def dynamic_onnx(predict_checkpoints, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert main(parse_args(["--weights", str(predict_checkpoints["ckpt"]), "--export-onnx", str(path),
                            "--dynamic"])) == 0
    return path


def test_export_is_dynamic_and_matches_pytorch_at_two_sizes(dynamic_onnx, predict_checkpoints):
    graph = onnx.load(str(dynamic_onnx))
    assert graph.opset_import[0].version >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    session = make_session(dynamic_onnx)
    model = predict_checkpoints["model"]
    for shape in [(1, 3, 64, 64), (2, 3, 97, 75)]:
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(shape[2]))
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {"images": x.numpy()})
        assert got.shape == expected.shape
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_export_prints_verification(predict_checkpoints, tmp_path, capsys):
    path = tmp_path / "static.onnx"
    assert main(parse_args(["--weights", str(predict_checkpoints["ckpt"]), "--export-onnx", str(path),
                            "--input-size", "48", "64"])) == 0
    out = capsys.readouterr().out
    assert "input 1x3x48x64: max |ORT - PyTorch| =" in out and "relative" in out
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 48, 64]


def test_static_export_runs_one_image_at_a_time(predict_checkpoints, tmp_path):
    path = tmp_path / "static.onnx"
    export_onnx(predict_checkpoints["model"], path, (64, 64), spec=ModelSpec(num_classes=3, input_size=(64, 64)))
    predictor = Predictor.from_onnx(path, InferenceOptions(batch_size=4))
    masks = predictor.predict([photo(64, 96, 0), photo(50, 50, 1), photo(70, 30, 2)])
    assert [m.shape for m in masks] == [(64, 96), (50, 50), (70, 30)]
    with pytest.raises(UserError, match="re-export with --export-onnx"):
        predictor.predict([photo(64, 64, 3)], tta=True)


def test_export_returns_both_checks(predict_checkpoints, tmp_path):
    checks = export_onnx(predict_checkpoints["model"], tmp_path / "m.onnx", (64, 64), dynamic=True, opset=18)
    assert len(checks) == 2 and checks[0].shape != checks[1].shape
    assert all(c.max_rel < 1e-4 for c in checks)
    with pytest.raises(UserError, match="opset"):
        export_onnx(predict_checkpoints["model"], tmp_path / "old.onnx", (64, 64), opset=11)


def test_onnx_predictor_agrees_with_pytorch(dynamic_onnx, predict_checkpoints):
    onnx_predictor = Predictor.from_onnx(dynamic_onnx)
    # The ONNX graph computes in float32, so it is compared with PyTorch in float32.
    torch_predictor = Predictor.from_weights(predict_checkpoints["ckpt"], InferenceOptions(device="cpu",
                                                                                           precision="fp32"))
    assert (onnx_predictor.num_classes, onnx_predictor.class_names, onnx_predictor.input_size) == (
        3, ["background", "cat", "dog"], (64, 64))
    images = [photo(64, 96, 0), photo(80, 50, 1), photo(120, 120, 2)]
    same = total = 0
    for a, b in zip(onnx_predictor.predict(images), torch_predictor.predict(images), strict=True):
        same += int((a == b).sum())
        total += a.size
    assert same / total >= 0.999


def test_predict_onnx_cli_matches_pytorch(dynamic_onnx, predict_checkpoints, tmp_path):
    from PIL import Image

    Image.fromarray(photo(64, 96, 4)).save(tmp_path / "a.png")
    for name, flags in (("torch", ["--weights", str(predict_checkpoints["ckpt"]), "--precision", "fp32"]),
                        ("onnx", ["--onnx", str(dynamic_onnx)])):
        assert main(parse_args([*flags, str(tmp_path / "a.png"), "--out", str(tmp_path / name),
                                "--save-mask"])) == 0
    a = np.asarray(Image.open(tmp_path / "torch" / "a_mask.png"))
    b = np.asarray(Image.open(tmp_path / "onnx" / "a_mask.png"))
    assert (a == b).mean() >= 0.999


def test_onnx_errors(dynamic_onnx, tmp_path):
    with pytest.raises(UserError, match="ONNX file not found"):
        Predictor.from_onnx(tmp_path / "none.onnx")
    (tmp_path / "junk.onnx").write_text("nope")
    with pytest.raises(UserError, match="not a usable ONNX model"):
        Predictor.from_onnx(tmp_path / "junk.onnx")
    with pytest.raises(UserError, match="3 classes"):
        Predictor.from_onnx(dynamic_onnx, class_names=["a", "b"])


def test_failed_verification_writes_nothing(predict_checkpoints, tmp_path, monkeypatch):
    from utils.inference import onnx_export

    monkeypatch.setattr(onnx_export, "verify", lambda *a, **k: onnx_export.Verification((1, 3, 64, 64), 1.0, 0.5))
    fresh = tmp_path / "fresh.onnx"
    with pytest.raises(UserError, match="disagrees with PyTorch.*nothing was written"):
        export_onnx(predict_checkpoints["model"], fresh, (64, 64))
    existing = tmp_path / "existing.onnx"
    existing.write_bytes(b"an earlier export")
    with pytest.raises(UserError, match="disagrees with PyTorch"):
        export_onnx(predict_checkpoints["model"], existing, (64, 64))
    assert not fresh.exists() and existing.read_bytes() == b"an earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.onnx"]  # no temporary file left behind


def test_export_replaces_a_file_only_after_verification(predict_checkpoints, tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    export_onnx(predict_checkpoints["model"], path, (64, 64), spec=ModelSpec(num_classes=3, input_size=(64, 64)))
    graph = onnx.load(str(path))
    assert [p.key for p in graph.metadata_props] == ["deeplabv3plus_spec"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_refuses_to_write_over_the_weights(predict_checkpoints):
    ckpt = predict_checkpoints["ckpt"]
    before = ckpt.read_bytes()
    with pytest.raises(UserError, match="is the --weights file itself"):
        main(parse_args(["--weights", str(ckpt), "--export-onnx", str(ckpt.parent / "." / ckpt.name)]))
    assert ckpt.read_bytes() == before


def test_export_metadata_keeps_the_head_and_the_crop_size(tmp_path, capsys):
    import json

    from nets.deeplabv3_plus import DeepLab
    from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
    from utils.summary import count_parameters

    torch.manual_seed(0)
    model = DeepLab(3, "mobilenet", head="separable").eval()
    config = {"backbone": "mobilenet", "head": "separable", "num_classes": 3, "downsample_factor": 16,
              "input_size": [32, 32], "crop_size": [32, 32]}
    save_checkpoint({"model": model.state_dict(), "config": config, "format": CHECKPOINT_FORMAT},
                    tmp_path / "separable.pth")
    path = tmp_path / "separable.onnx"
    assert main(parse_args(["--weights", str(tmp_path / "separable.pth"), "--export-onnx", str(path)])) == 0
    (entry,) = onnx.load(str(path)).metadata_props
    meta = json.loads(entry.value)
    assert (meta["head"], meta["crop_size"], meta["version"]) == ("separable", [32, 32], SPEC_VERSION)
    # A crop-trained model slides by default under --onnx as it does under --weights.
    assert Predictor.from_onnx(path).slide == SlideOptions()
    # --fps counts the separable head (the standard one has ~1.6 M more parameters).
    capsys.readouterr()
    assert main(parse_args(["--onnx", str(path), "--fps", "1"])) == 0
    assert f"parameters: {count_parameters(model) / 1e6:.2f} M" in capsys.readouterr().out


def test_an_export_from_before_the_spec_still_loads(predict_checkpoints, tmp_path):
    """ONNX files written before the spec carried a flat config under another key (read as version 1)."""
    import json

    path = tmp_path / "v1.onnx"
    export_onnx(predict_checkpoints["model"], path, (64, 64), dynamic=True)
    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = "deeplabv3plus_config", json.dumps(
        {"backbone": "mobilenet", "head": "standard", "num_classes": 3, "class_names": ["bg", "cat", "dog"],
         "downsample_factor": 16, "input_size": [64, 64], "crop_size": None, "task": "multiclass", "threshold": None})
    onnx.save(model, str(path))
    predictor = Predictor.from_onnx(path)
    assert predictor.class_names == ["bg", "cat", "dog"] and predictor.input_size == (64, 64)
    assert predictor.task.name == "multiclass" and predictor.slide is None


def test_a_multiband_export_carries_and_applies_the_band_statistics(tmp_path):
    """A 4-band uint16 model: the ONNX metadata holds bands, mean and std, and ONNX Runtime predicts what
    PyTorch predicts from the same raw uint16 input."""
    from nets.spec import build_model

    torch.manual_seed(0)
    spec = ModelSpec(num_classes=3, in_channels=4, input_size=(64, 64), bands=(4, 3, 2, 1),
                     mean=(1500.0, 1480.0, 1490.0, 2000.0), std=(560.0, 570.0, 555.0, 830.0))
    model = build_model(spec).eval()
    path = tmp_path / "bands.onnx"
    export_onnx(model, path, (64, 64), spec=spec)
    onnx_predictor = Predictor.from_onnx(path)
    assert (onnx_predictor.spec.bands, onnx_predictor.spec.mean, onnx_predictor.spec.std) == (
        spec.bands, spec.mean, spec.std)
    torch_predictor = Predictor(model, spec, InferenceOptions(device="cpu", precision="fp32"))
    rng = np.random.default_rng(0)
    image = cv2.resize(rng.integers(200, 4000, (12, 16, 4)).astype(np.uint16), (100, 72))
    a, b = onnx_predictor.predict([image])[0], torch_predictor.predict([image])[0]
    assert (a == b).mean() >= 0.999
    assert len(np.unique(b)) > 1  # the statistics bring the input into the network's range
