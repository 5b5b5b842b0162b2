"""The backbone registry: an unknown name is refused with the choices, and a new backbone is one module
plus one entry that then trains, predicts and exports through the scripts like the built-in ones."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import predict
import train
from nets.registry import BackboneEntry, backbone_names, get_backbone, register_backbone, unregister_backbone
from nets.spec import ModelSpec, build_model
from utils.data.io import load_image
from utils.errors import UserError
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor
from utils.training.schedule import lr_limits


class TinyBackbone(nn.Module):
    """Two strided conv blocks: low-level features at stride 4, high-level ones at the output stride."""

    def __init__(self, output_stride: int, bands: int) -> None:
        super().__init__()
        self.low = nn.Sequential(nn.Conv2d(bands, 8, 3, 4, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.high = nn.Sequential(nn.Conv2d(8, 16, 3, output_stride // 4, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.low(x)
        return low, self.high(low)


TINY = BackboneEntry(name="tiny", factory=TinyBackbone, low_level_channels=8, high_level_channels=16,
                     marker_key="backbone.low.0.weight", lr_limits={"adam": (2e-4, 2e-4)})


@pytest.fixture
def tiny_backbone():
    register_backbone(TINY)
    yield TINY
    unregister_backbone("tiny")


def test_unknown_backbone_lists_the_choices():
    with pytest.raises(ValueError, match=r"backbone must be one of mobilenet, xception; got 'resnet'"):
        get_backbone("resnet")
    with pytest.raises(ValueError, match="mobilenet, xception"):
        ModelSpec(backbone="resnet")
    with pytest.raises(UserError, match="invalid choice: 'resnet'"):
        train.parse_args(["--backbone", "resnet"])


def test_a_taken_name_is_not_replaced_silently(tiny_backbone):
    with pytest.raises(ValueError, match="already registered"):
        register_backbone(TINY)
    register_backbone(TINY, replace=True)


def test_the_entry_drives_the_model_and_the_lr_limits(tiny_backbone):
    assert "tiny" in backbone_names()
    model = build_model(ModelSpec(backbone="tiny", num_classes=3, downsample_factor=8))
    assert isinstance(model.backbone, TinyBackbone)
    assert model(torch.rand(2, 3, 32, 48)).shape == (2, 3, 32, 48)
    assert lr_limits("adam", "tiny") == (2e-4, 2e-4) and lr_limits("sgd", "tiny") == lr_limits("sgd", "mobilenet")


def test_a_registered_backbone_trains_predicts_and_exports(tiny_backbone, train_data_root, tmp_path):
    save_dir = tmp_path / "run"
    argv = ["--data-root", str(train_data_root), "--classes", str(train_data_root / "classes.txt"),
            "--backbone", "tiny", "--input-size", "64", "--epochs", "1", "--freeze-epochs", "0",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--save-dir", str(save_dir)]
    assert train.main(train.parse_args(argv)) == 0
    saved = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert saved["spec"]["backbone"] == "tiny"
    assert "backbone.low.0.weight" in saved["model"]

    image_path = next((train_data_root / "JPEGImages").iterdir())
    out = tmp_path / "out"
    assert predict.main(predict.parse_args(["--weights", str(save_dir / "last.pth"), str(image_path),
                                            "--out", str(out), "--save-mask", "--device", "cpu"])) == 0
    assert (out / image_path.name).is_file()

    # A bare state dict of the new backbone is recognised by its marker key.
    torch.save(saved["model"], tmp_path / "bare.pth")
    bare = Predictor.from_weights(tmp_path / "bare.pth", InferenceOptions(device="cpu", precision="fp32"),
                                  input_size=[64, 64])
    assert bare.spec.backbone == "tiny"

    onnx_path = tmp_path / "tiny.onnx"
    assert predict.main(predict.parse_args(["--weights", str(save_dir / "last.pth"), "--export-onnx",
                                            str(onnx_path), "--no-simplify"])) == 0
    assert onnx.load(str(onnx_path)).graph.input[0].name == "images"
    image = load_image(image_path)
    from_onnx = Predictor.from_onnx(onnx_path).predict([image])[0]
    from_torch = Predictor.from_weights(save_dir / "last.pth", InferenceOptions(device="cpu", precision="fp32"))
    assert np.mean(from_onnx == from_torch.predict([image])[0]) > 0.99
