"""Exact resume: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed ends with bitwise the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from train import main, parse_args
from utils.training import trainer as trainer_module
from utils.training.stop import StopRequest

REPO = Path(__file__).resolve().parents[2]


def run_args(root: Path, weights: Path, save_dir: Path, *extra: str) -> list[str]:
    # One frozen epoch (from --weights) so the phase switch is part of what must resume exactly; one
    # (persistent) worker so that per-sample seeding in a worker process is too.
    return [sys.executable, "train.py", "--data-root", str(root), "--classes", str(root / "classes.txt"),
            "--weights", str(weights),
            "--input-size", "64", "--epochs", "4", "--freeze-epochs", "1", "--freeze-batch-size", "4",
            "--batch-size", "2", "--workers", "1", "--device", "cpu", "--eval-period", "4", "--seed", "5",
            "--save-dir", str(save_dir), *extra]


def read_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def start_and_wait(argv: list[str], last: Path, epochs: int) -> subprocess.Popen:
    """Start a training process and return once ``last`` records at least ``epochs`` finished epochs."""
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        if last.is_file() and (read_epoch(last) or 0) >= epochs:
            return proc
        if proc.poll() is not None:
            raise AssertionError(f"training ended early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("training did not reach the expected epoch in time")


def assert_same_state(a: dict, b: dict) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for name, value in state_a[index].items():
            assert torch.equal(value, state_b[index][name]), (index, name)
    assert a["scheduler"] == b["scheduler"]
    assert a["best_miou"] == b["best_miou"]


@pytest.fixture(scope="module")
def reference(train_data_root, init_weights, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("ref") / "run"
    result = subprocess.run(run_args(train_data_root, init_weights, save_dir), cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)


def test_sigkill_after_epoch_2_then_resume_auto_is_bitwise_exact(reference, train_data_root, init_weights,
                                                                 tmp_path):
    save_dir = tmp_path / "killed"
    proc = start_and_wait(run_args(train_data_root, init_weights, save_dir), save_dir / "last.pth", 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 2 <= read_epoch(save_dir / "last.pth") < 4
    result = subprocess.run(run_args(train_data_root, init_weights, save_dir, "--resume", "auto"), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    resumed = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert resumed["epoch"] == 4
    assert_same_state(reference, resumed)
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3, 4]


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX signals")
def test_ctrl_c_mid_epoch_saves_and_resumes_exactly(reference, train_data_root, init_weights, tmp_path):
    save_dir = tmp_path / "interrupted"
    proc = start_and_wait(run_args(train_data_root, init_weights, save_dir), save_dir / "last.pth", 1)
    proc.send_signal(signal.SIGINT)  # early in epoch 2, or at its start
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "--resume auto" in stderr and str(save_dir) in stderr
    assert "Traceback" not in stderr
    interrupted = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert interrupted["epoch"] < 4
    result = subprocess.run(run_args(train_data_root, init_weights, save_dir, "--resume", "auto"), cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert_same_state(reference, torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True))


class StopAfter(StopRequest):
    """A Ctrl-C that arrives after a fixed number of iterations (the loop reads ``requested`` once per iteration)."""

    reads = 0
    limit = 6

    @property
    def requested(self) -> bool:
        StopAfter.reads += 1
        return StopAfter.reads > StopAfter.limit

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def test_stop_in_the_middle_of_an_epoch_resumes_exactly_with_another_worker_count(train_data_root, init_weights,
                                                                                 tmp_path, monkeypatch):
    """Each sample is a function of (seed, epoch, index): resuming with 2 workers a run that loaded in-process
    ends with the weights of the uninterrupted in-process run."""
    def argv(save_dir: Path, *extra: str, workers: int = 0) -> list[str]:
        return [*run_args(train_data_root, init_weights, save_dir, *extra)[2:], "--epochs", "3",
                "--freeze-batch-size", "2", "--workers", str(workers)]

    assert main(parse_args(argv(tmp_path / "ref"))) == 0
    reference = torch.load(tmp_path / "ref" / "last.pth", map_location="cpu", weights_only=True)
    monkeypatch.setattr(trainer_module, "StopRequest", StopAfter)
    assert main(parse_args(argv(tmp_path / "run"))) == 130
    stopped = torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=True)
    # 4 batches in epoch 1, then 2 of epoch 2 done when the stop is seen.
    assert (stopped["epoch"], stopped["iteration"]) == (1, 2)
    monkeypatch.undo()
    assert main(parse_args(argv(tmp_path / "run", "--resume", "auto", workers=2))) == 0
    assert_same_state(reference, torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=True))
