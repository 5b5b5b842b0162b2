"""Weight loading: our checkpoints, the original's bare state dicts, partial loads, clear errors."""

from __future__ import annotations

import os

import pytest
import torch

from nets.deeplabv3_plus import DeepLab
from nets.spec import spec_from_state
from utils.checkpoint import (
    CHECKPOINT_FORMAT,
    load_model,
    load_weights,
    read_spec,
    read_weights_file,
    save_checkpoint,
    split_checkpoint,
)
from utils.errors import UserError


@pytest.fixture(scope="module")
def mobilenet21():
    torch.manual_seed(0)
    return DeepLab(21, "mobilenet").eval()


def test_save_checkpoint_is_atomic_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "run" / "last.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 3}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 3
    save_checkpoint({"model": {"w": torch.ones(2)}, "epoch": 4}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 4
    assert sorted(os.listdir(path.parent)) == ["last.pth"]


def test_failed_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - any pickling error will do
        save_checkpoint({"epoch": 2, "bad": lambda: None}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["last.pth"]


def test_missing_and_non_checkpoint_files_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="not found: .*nope.pth"):
        read_weights_file(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(UserError, match="junk.pth is not a PyTorch checkpoint"):
        read_weights_file(junk)


def test_truncated_checkpoint_is_reported(tmp_path, mobilenet21):
    path = tmp_path / "full.pth"
    torch.save(mobilenet21.state_dict(), path)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_model(cut)


def test_bare_original_state_dict_with_module_prefix_loads_and_infers_config(tmp_path, mobilenet21):
    path = tmp_path / "deeplab_mobilenetv2.pth"
    torch.save({f"module.{k}": v for k, v in mobilenet21.state_dict().items()}, path)
    model, spec = load_model(path)
    assert spec.backbone == "mobilenet"
    assert spec.num_classes == 21
    assert spec.downsample_factor == 16
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(model(x), mobilenet21(x))


def test_our_checkpoint_carries_its_config(tmp_path):
    model = DeepLab(3, "xception", downsample_factor=8)
    path = tmp_path / "best.pth"
    config = {"backbone": "xception", "num_classes": 3, "class_names": ["bg", "a", "b"],
              "downsample_factor": 8, "input_size": [256, 320]}
    save_checkpoint({"model": model.state_dict(), "config": config, "format": CHECKPOINT_FORMAT, "epoch": 1}, path)
    loaded, got = load_model(path)
    assert got.class_names == ["bg", "a", "b"]
    assert got.input_size == (256, 320)
    assert loaded.downsample_factor == 8
    with pytest.raises(UserError, match="trained for 3 classes, but 5 were given"):
        load_model(path, num_classes=5)


def test_spec_from_state_rejects_other_models():
    with pytest.raises(ValueError, match="not a DeepLabV3\\+ model"):
        spec_from_state({"fc.weight": torch.zeros(2, 2)})
    with pytest.raises(UserError, match="not a DeepLabV3\\+ model"):
        read_spec({"fc.weight": torch.zeros(2, 2)}, None, "other.pth")
    state, config = split_checkpoint({"state_dict": {"module.cls_conv.weight": torch.zeros(2)}})
    assert list(state) == ["cls_conv.weight"]
    assert config is None


def test_partial_load_reports_skipped_head_in_words(mobilenet21):
    model = DeepLab(3, "mobilenet")
    report = load_weights(model, mobilenet21.state_dict(), strict=False)
    assert "cls_conv.weight: checkpoint has 21 classes, model has 3" in report.skipped
    assert "cls_conv.bias: checkpoint has 21 classes, model has 3" in report.skipped
    assert len(report.loaded) == len(mobilenet21.state_dict()) - 2
    assert torch.equal(model.state_dict()["aspp.branch1.0.weight"], mobilenet21.state_dict()["aspp.branch1.0.weight"])
    assert "cls_conv.weight: checkpoint has 21 classes, model has 3" in report.summary()


def test_strict_load_explains_class_mismatch(mobilenet21):
    with pytest.raises(UserError) as info:
        load_weights(DeepLab(3, "mobilenet"), mobilenet21.state_dict(), strict=True)
    assert "cls_conv.weight: checkpoint has 21 classes, model has 3" in str(info.value)
    assert "size mismatch" not in str(info.value)


def test_strict_load_explains_backbone_mismatch(mobilenet21):
    with pytest.raises(UserError, match="holds a mobilenet model, but the model is xception"):
        load_weights(DeepLab(21, "xception"), mobilenet21.state_dict(), strict=True)


def test_saved_and_copied_checkpoints_get_normal_permissions(tmp_path):
    import os

    from utils.checkpoint import copy_checkpoint, save_checkpoint

    umask = os.umask(0o022)
    try:
        last = save_checkpoint({"epoch": 3}, tmp_path / "last.pth")
        best = copy_checkpoint(last, tmp_path / "best.pth")
    finally:
        os.umask(umask)
    assert best.read_bytes() == last.read_bytes()
    assert torch.load(best, weights_only=True) == {"epoch": 3}
    assert [oct(p.stat().st_mode & 0o777) for p in (last, best)] == [oct(0o644)] * 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pth", "last.pth"]
