"""Command-line conventions shared by the scripts: bad flags and devices give one ``error:`` line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import get_miou
import predict
import train
from utils import summary
from utils.device import resolve_device
from utils.errors import ArgumentParser, UserError, parse_input_size

REPO = Path(__file__).resolve().parents[1]


def test_argument_parser_raises_user_error():
    parser = ArgumentParser(prog="tool.py")
    parser.add_argument("--n", type=int)
    with pytest.raises(UserError, match=r"--n: invalid int value: 'x' \(see python tool.py --help\)"):
        parser.parse_args(["--n", "x"])


def test_resolve_device_accepts_cpu_forms_and_rejects_other_types():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    assert resolve_device("auto") == resolve_device(None)
    for name in ("mps", "xpu", "banana"):
        with pytest.raises(UserError, match="use auto, cpu, cuda or cuda:N"):
            resolve_device(name)


@pytest.mark.parametrize("argv", [
    ["train.py", "--bogus"],
    ["train.py", "--epochs", "x"],
    ["predict.py", "--bogus"],
    ["predict.py", "--device", "mps", "--fps", "1"],
    ["predict.py", "--batch-size", "0"],
    ["-m", "utils.summary", "--bogus"],
    ["-m", "utils.summary", "--input-size", "8"],
])
def test_bad_flags_give_one_error_line_and_exit_2(argv):
    result = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr


def test_parse_input_size_gives_h_w():
    assert parse_input_size(None) is None
    assert parse_input_size([64]) == [64, 64]
    assert parse_input_size([48, 80]) == [48, 80]
    assert parse_input_size([16]) == [16, 16]
    assert parse_input_size([32, 40], minimum=32) == [32, 40]


@pytest.mark.parametrize(("parse", "sizes", "extra", "minimum"), [
    (predict.parse_args, ["8"], [], 16),
    (get_miou.parse_args, ["64", "64", "64"], [], 16),
    (summary.parse_args, ["64", "15"], [], 16),
    (train.parse_args, ["31"], ["--save-dir", "unused"], 32),
])
def test_every_script_explains_a_bad_input_size_alike(parse, sizes, extra, minimum):
    with pytest.raises(UserError) as info:
        parse(["--input-size", *sizes, *extra])
    assert str(info.value) == (f"--input-size {' '.join(sizes)}: give H or H W, each at least {minimum} "
                               "(e.g. --input-size 512 or --input-size 512 1024)")
