"""``TrainOptions``: one field per train.py flag with the flag's default, and options built in Python train
and record the same settings as train.py's command line."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import train
from tests.test_train import tiny_args
from utils.training.args import validate_args
from utils.training.options import TrainOptions, field_choices, flag_fields
from utils.training.trainer import run_training


def test_every_flag_has_a_field_with_its_default():
    parsed = vars(train.build_parser().parse_args([]))  # every flag at its default, in the parser's order
    defaults = TrainOptions()
    fields = {spec.name: getattr(defaults, spec.name) for spec in flag_fields()}
    assert set(parsed) - set(fields) == set(), "train.py flags without a TrainOptions field"
    assert set(fields) - set(parsed) == set(), "TrainOptions flag fields without a train.py flag"
    assert fields == parsed
    # Checkpoints and config.json record the settings in field order, as they did in the parser's.
    assert list(fields) == list(parsed)


def test_settings_are_the_flags_and_class_names():
    flags = [spec.name for spec in flag_fields()]
    assert list(TrainOptions().settings()) == [*flags, "class_names"]
    assert {spec.name for spec in dataclasses.fields(TrainOptions)} - {*flags, "class_names"} == {
        "argv", "parsed_label_map", "parsed_class_weights", "parsed_bands"}


def test_python_options_take_the_given_fields_as_given(tmp_path):
    options = TrainOptions(data_root=tmp_path, epochs=2, input_size=[512])
    assert options.data_root == str(tmp_path)  # paths are kept as str, as checkpoints record them
    assert options.changed() == {"data_root", "epochs"}


def _recorded(save_dir) -> dict:
    return torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)


def test_python_options_train_and_record_what_the_command_line_records(train_data_root, tmp_path):
    python_dir, cli_dir = tmp_path / "python", tmp_path / "cli"
    options = validate_args(TrainOptions(
        data_root=train_data_root, classes=train_data_root / "classes.txt", input_size=[64], epochs=1,
        freeze_epochs=0, batch_size=2, workers=0, device="cpu", save_dir=python_dir, lr=0.01))
    assert options.class_names == ["background", "circle", "rectangle", "triangle"] and options.min_lr == 1e-4
    assert run_training(options) == 0
    assert train.main(train.parse_args(tiny_args(train_data_root, cli_dir))) == 0
    ours, theirs = _recorded(python_dir), _recorded(cli_dir)
    assert ours["train"].pop("save_dir") == str(python_dir) and theirs["train"].pop("save_dir") == str(cli_dir)
    assert ours["train"] == theirs["train"]
    assert ours["spec"] == theirs["spec"]
    configs = [json.loads((folder / "config.json").read_text()) for folder in (python_dir, cli_dir)]
    for config in configs:
        config.pop("save_dir")
    assert configs[0] == configs[1]
    # The same seeded run on the CPU: the same weights.
    assert all(torch.equal(ours["model"][key], theirs["model"][key]) for key in theirs["model"])


def test_fields_with_fixed_values_refuse_others_and_list_the_valid_ones():
    parser_choices = {action.dest: tuple(action.choices) for action in train.build_parser()._actions
                      if action.choices}
    assert {name: parser_choices[name] for name in field_choices()} == field_choices()
    with pytest.raises(ValueError, match=r"backbone='resnet' is not one of: .*mobilenet.*xception"):
        TrainOptions(backbone="resnet")
    with pytest.raises(ValueError, match=r"optimizer='lamb' is not one of: sgd"):
        TrainOptions(optimizer="lamb")
