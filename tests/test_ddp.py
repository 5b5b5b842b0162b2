"""DDP on the CPU: torchrun with two gloo processes trains and writes one set of files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from utils.checkpoint import load_model

REPO = Path(__file__).resolve().parents[1]


def test_torchrun_two_processes_on_cpu(train_data_root, init_weights, tmp_path):
    save_dir = tmp_path / "ddp"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
            "--data-root", str(train_data_root), "--classes", str(train_data_root / "classes.txt"),
            "--weights", str(init_weights),
            "--input-size", "64", "--epochs", "2", "--freeze-epochs", "1", "--freeze-batch-size", "4",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--eval-period", "1", "--save-period", "1",
            "--save-dir", str(save_dir)]
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in save_dir.iterdir())
    assert names == ["best.pth", "config.json", "epoch_001.pth", "epoch_002.pth", "last.pth", "loss.png",
                     "metrics.csv", "miou.png", "tensorboard"]
    assert len(list((save_dir / "tensorboard").iterdir())) == 1  # only rank 0 writes
    assert result.stdout.count("model    :") == 1  # one summary, printed by rank 0
    rows = (save_dir / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3
    ckpt = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    _model, config = load_model(save_dir / "last.pth")
    assert config.num_classes == 4
