"""The model spec: validation, the task object, its JSON form, and the migration of version-1 configs."""

from __future__ import annotations

import json

import pytest
import torch

from nets.deeplabv3_plus import DeepLab
from nets.spec import SPEC_VERSION, ModelSpec, build_model, spec_from_state
from nets.task import BINARY, MULTICLASS, TASKS, get_task, task_for_channels
from utils.checkpoint import CHECKPOINT_FORMAT, load_model, save_checkpoint
from utils.errors import UserError


def test_spec_round_trips_through_its_dict():
    spec = ModelSpec(backbone="xception", num_classes=2, task="binary", head="separable", downsample_factor=8,
                     input_size=(96, 128), crop_size=(96, 128), class_names=["bg", "road"], label_map="3:1,*:0",
                     threshold=0.35, init="kaiming", in_channels=4, bands=(4, 3, 2, 1), mean=(300, 410.5, 0, -2),
                     std=(12.5, 1, 0.25, 3))
    data = spec.to_dict()
    assert data["version"] == SPEC_VERSION == 3 and data["input_size"] == [96, 128]
    assert (data["bands"], data["mean"], data["std"]) == \
        ([4, 3, 2, 1], [300.0, 410.5, 0.0, -2.0], [12.5, 1.0, 0.25, 3.0])
    assert json.loads(json.dumps(data)) == data
    assert ModelSpec.from_dict(data) == spec


def test_version_two_specs_migrate_without_bands_or_statistics():
    """A spec as this toolkit wrote it before per-band input: all bands, 8-bit /255."""
    data = ModelSpec(num_classes=3, init="normal").to_dict()
    for key in ("bands", "mean", "std"):
        del data[key]
    spec = ModelSpec.from_dict({**data, "version": 2})
    assert (spec.bands, spec.mean, spec.std, spec.version) == (None, None, None, SPEC_VERSION)
    assert spec == ModelSpec(num_classes=3, init="normal")


@pytest.mark.parametrize(("changes", "message"), [
    ({"head": "fancy"}, "head must be one of standard, separable"),
    ({"task": "multilabel"}, "task must be one of multiclass, binary"),
    ({"downsample_factor": 4}, "must be one of 8, 16"),
    ({"num_classes": 1}, "num_classes must be an integer >= 2"),
    ({"task": "binary", "num_classes": 3}, "a binary model has 2 classes"),
    ({"num_classes": 3, "class_names": ["a", "b"]}, "3 classes need 3 class names"),
    ({"threshold": 0.4}, "a threshold applies to binary models"),
    ({"init": "xavier"}, "init must be one of normal, kaiming, pytorch"),
    ({"bands": (4, 3)}, r"bands must be 3 band indices of 1 or more"),
    ({"bands": (0, 1, 2)}, r"bands must be 3 band indices"),
    ({"mean": (1, 2, 3)}, "mean and std go together"),
    ({"mean": (1, 2), "std": (1, 2)}, "mean and std need 3 values"),
    ({"mean": (1, 2, 3), "std": (1, 0, 3)}, "std finite and above 0"),
    ({"mean": (1, float("nan"), 3), "std": (1, 1, 3)}, "mean must be finite"),
])
def test_invalid_specs_name_the_valid_values(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec(**changes)


def test_the_task_answers_channels_activation_and_decision():
    assert get_task("binary") is BINARY and set(TASKS) == {"multiclass", "binary"}
    assert (BINARY.output_channels(2), MULTICLASS.output_channels(5)) == (1, 5)
    assert task_for_channels(1) is BINARY and task_for_channels(4) is MULTICLASS
    assert BINARY.default_threshold == 0.5 and MULTICLASS.default_threshold is None
    probs = torch.tensor([[[[0.2, 0.5, 0.7]]]])
    assert BINARY.labels(probs, 0.5).tolist() == [[[0, 1, 1]]]
    assert BINARY.labels(probs, 0.6).tolist() == [[[0, 0, 1]]]
    three = torch.tensor([[[[0.1]], [[0.7]], [[0.2]]]])
    assert MULTICLASS.labels(three).tolist() == [[[1]]]
    with pytest.raises(ValueError, match="task must be one of"):
        get_task("regression")


def test_a_binary_spec_gets_the_default_threshold_and_one_output_channel():
    spec = ModelSpec(num_classes=2, task="binary")
    assert spec.threshold == 0.5 and spec.output_channels == 1
    assert build_model(spec).cls_conv.out_channels == 1


def test_a_bare_state_dict_implies_its_spec():
    state = DeepLab(1, "xception", head="separable").state_dict()
    spec = spec_from_state(state)
    assert (spec.backbone, spec.head, spec.task, spec.num_classes, spec.in_channels) == \
        ("xception", "separable", "binary", 2, 3)


def test_version_one_configs_migrate(tmp_path):
    """A checkpoint as train.py wrote it before the spec: one flat config holding every training flag."""
    torch.manual_seed(0)
    model = DeepLab(1, "mobilenet").eval()
    config = {"backbone": "mobilenet", "num_classes": 2, "class_names": ["background", "foreground"],
              "downsample_factor": 16, "input_size": [64, 96], "task": "binary", "label_map": "255:1",
              "head": "standard", "threshold": 0.65, "crop_size": None, "epochs": 3, "lr": 0.01,
              "optimizer": "sgd", "data_root": "VOCdevkit/x", "argv_flag_we_never_knew": 1}
    path = tmp_path / "v1.pth"
    save_checkpoint({"model": model.state_dict(), "config": config, "format": CHECKPOINT_FORMAT}, path)
    loaded, spec = load_model(path)
    assert spec == ModelSpec(num_classes=2, task="binary", input_size=(64, 96),
                             class_names=["background", "foreground"], label_map="255:1", threshold=0.65)
    assert spec.version == SPEC_VERSION and spec.init is None
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    # A multi-class version-1 config recorded the threshold flag's empty value; it is dropped.
    assert ModelSpec.from_dict({"num_classes": 3, "threshold": 0.5}).threshold is None


def test_a_newer_spec_version_is_refused(tmp_path):
    path = tmp_path / "future.pth"
    spec = {**ModelSpec(num_classes=3).to_dict(), "version": SPEC_VERSION + 1}
    save_checkpoint({"model": DeepLab(3).state_dict(), "spec": spec, "format": CHECKPOINT_FORMAT}, path)
    with pytest.raises(UserError, match="newer than this toolkit"):
        load_model(path)
