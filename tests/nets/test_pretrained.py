"""ImageNet backbone files: loading, reporting unused keys, and failing fast and clearly offline."""

from __future__ import annotations

import time
import urllib.error

import pytest
import torch

from nets import pretrained
from nets.mobilenetv2 import MobileNetV2
from nets.registry import RELEASE_URL
from nets.xception import Xception
from utils.errors import UserError


def test_offline_download_fails_fast_with_file_address_and_destination(tmp_path, monkeypatch):
    def offline(url, dst, progress=True):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        pretrained.load_imagenet_backbone(MobileNetV2(), "mobilenet", model_dir=tmp_path)
    message = str(info.value)
    assert time.perf_counter() - start < 5
    assert "mobilenet_v2.pth.tar" in message
    assert RELEASE_URL + "mobilenet_v2.pth.tar" in message
    assert str(tmp_path / "mobilenet_v2.pth.tar") in message
    assert not (tmp_path / "mobilenet_v2.pth.tar").exists()


def test_download_goes_through_torch_hub_to_model_data(tmp_path, monkeypatch):
    source = MobileNetV2().state_dict()
    calls = []

    def fake_download(url, dst, progress=True):
        calls.append((url, progress))
        torch.save(source, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    backbone = MobileNetV2()
    pretrained.load_imagenet_backbone(backbone, "mobilenet", model_dir=tmp_path, verbose=False)
    assert calls == [(RELEASE_URL + "mobilenet_v2.pth.tar", True)]
    assert torch.equal(backbone.state_dict()["features.0.0.weight"], source["features.0.0.weight"])


def test_corrupt_file_names_the_file_and_the_address(tmp_path):
    (tmp_path / "xception_pytorch_imagenet.pth").write_bytes(b"\x00" * 100)
    with pytest.raises(UserError) as info:
        pretrained.load_imagenet_backbone(Xception(), "xception", model_dir=tmp_path)
    assert "xception_pytorch_imagenet.pth is corrupt or truncated" in str(info.value)
    assert RELEASE_URL + "xception_pytorch_imagenet.pth" in str(info.value)


def test_classification_file_loads_and_reports_unused_keys(tmp_path, capsys):
    state = MobileNetV2().state_dict()
    state["features.18.0.weight"] = torch.zeros(1280, 320, 1, 1)
    state["classifier.1.weight"] = torch.zeros(1000, 1280)
    state["classifier.1.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "mobilenet_v2.pth.tar")
    backbone = MobileNetV2()
    unused = pretrained.load_imagenet_backbone(backbone, "mobilenet", model_dir=tmp_path)
    assert sorted(unused) == ["classifier.1.bias", "classifier.1.weight", "features.18.0.weight"]
    assert "classifier.1.* (2)" in capsys.readouterr().out
    assert torch.equal(backbone.state_dict()["features.3.conv.0.weight"], state["features.3.conv.0.weight"])


def test_backbone_key_missing_from_file_is_an_error(tmp_path):
    state = MobileNetV2().state_dict()
    del state["features.17.conv.7.weight"]
    torch.save(state, tmp_path / "mobilenet_v2.pth.tar")
    with pytest.raises(UserError, match="1 keys missing.*features.17.conv.7.weight"):
        pretrained.load_imagenet_backbone(MobileNetV2(), "mobilenet", model_dir=tmp_path)


def test_rgb_kernels_adapt_to_more_bands_by_timm_convention(tmp_path, capsys):
    """Four bands from an RGB file: the RGB kernels copied, the 4th their mean, all scaled by 3/4."""
    source = MobileNetV2().state_dict()
    torch.save(source, tmp_path / "mobilenet_v2.pth.tar")
    backbone = MobileNetV2(in_channels=4)
    pretrained.load_imagenet_backbone(backbone, "mobilenet", model_dir=tmp_path, in_channels=4)
    rgb = source["features.0.0.weight"]
    got = backbone.state_dict()["features.0.0.weight"]
    assert got.shape == (32, 4, 3, 3)
    for band in range(3):
        torch.testing.assert_close(got[:, band], rgb[:, band] * 0.75)
    torch.testing.assert_close(got[:, 3], (rgb[:, 0] + rgb[:, 1] + rgb[:, 2]) / 3 * 0.75)
    # Every other tensor is the file's, bitwise.
    assert torch.equal(backbone.state_dict()["features.1.conv.0.weight"], source["features.1.conv.0.weight"])
    assert "adapted from RGB to 4 bands" in capsys.readouterr().out


def test_released_rgb_weights_load_into_an_n_band_model_with_adapted_kernels():
    """--weights of a 3-band model into a 4-band one: the first kernels follow timm's rule, and the report says so."""
    from nets.spec import ModelSpec, build_model
    from utils.checkpoint import load_weights

    torch.manual_seed(0)
    source = build_model(ModelSpec(num_classes=21)).state_dict()
    target = build_model(ModelSpec(num_classes=3, in_channels=4))
    report = load_weights(target, source, strict=False)
    key = "backbone.features.0.0.weight"
    rgb = source[key]
    expected = torch.cat((rgb, rgb.mean(1, keepdim=True)), 1) * 0.75
    torch.testing.assert_close(target.state_dict()[key], expected)
    assert key in report.loaded
    assert "RGB kernels adapted to 4 bands" in report.summary() and "scaled by 3/4" in report.summary()
