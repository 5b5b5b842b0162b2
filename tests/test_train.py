"""train.py end to end on a tiny dataset, resume checks, and the messages for bad input."""

from __future__ import annotations

import csv
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.test_recipe import poison_criterion
from train import main, parse_args
from utils.checkpoint import CHECKPOINT_FORMAT, load_model, save_checkpoint
from utils.data.io import load_image
from utils.errors import UserError
from utils.inference.options import InferenceOptions
from utils.inference.predictor import Predictor
from utils.training.distributed import DistContext

REPO = Path(__file__).resolve().parents[1]


def tiny_args(root: Path, save_dir: Path, *extra: str) -> list[str]:
    """Flags for a fast CPU run: 64x64 input, batch 2, no workers, one epoch."""
    return ["--data-root", str(root), "--classes", str(root / "classes.txt"), "--input-size", "64",
            "--epochs", "1", "--freeze-epochs", "0", "--batch-size", "2", "--workers", "0", "--device", "cpu",
            "--save-dir", str(save_dir), "--lr", "0.01", *extra]


@pytest.fixture(scope="module")
def smoke_run(train_data_root, tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("smoke") / "run"
    status = main(parse_args(tiny_args(train_data_root, save_dir, "--save-period", "1", "--eval-period", "1")))
    return status, save_dir


def test_one_epoch_writes_every_file(smoke_run):
    status, save_dir = smoke_run
    assert status == 0
    for name in ("last.pth", "best.pth", "epoch_001.pth", "metrics.csv", "config.json", "loss.png", "miou.png"):
        assert (save_dir / name).is_file(), name
        assert (save_dir / name).stat().st_size > 0, name
    assert list((save_dir / "tensorboard").glob("events.out.tfevents.*"))
    with open(save_dir / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1"]
    assert 0.0 <= float(rows[0]["miou"]) <= 1.0
    assert math.isfinite(float(rows[0]["train_loss"])) and math.isfinite(float(rows[0]["val_loss"]))
    config = json.loads((save_dir / "config.json").read_text())
    assert config["num_classes"] == 4 and config["input_size"] == [64, 64] and config["batch_size"] == 2


def test_checkpoint_holds_the_training_state(smoke_run):
    _, save_dir = smoke_run
    ckpt = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "best_miou", "rng", "spec", "train", "format"):
        assert key in ckpt, key
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["epoch"] == 1
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert ckpt["spec"]["class_names"] == ["background", "circle", "rectangle", "triangle"]
    assert ckpt["spec"]["backbone"] == "mobilenet" and ckpt["spec"]["downsample_factor"] == 16


def test_checkpoint_loads_for_prediction_without_flags(smoke_run, train_data_root):
    _, save_dir = smoke_run
    model, config = load_model(save_dir / "best.pth")
    assert config.num_classes == 4 and config.input_size == (64, 64)
    assert model.cls_conv.out_channels == 4
    image = load_image(next((train_data_root / "JPEGImages").iterdir()))
    mask = Predictor.from_weights(save_dir / "best.pth", InferenceOptions(device="cpu")).predict([image])[0]
    assert mask.shape == image.shape[:2] and mask.max() < 4


def test_new_run_never_overwrites_a_finished_one(smoke_run, train_data_root):
    _, save_dir = smoke_run
    with pytest.raises(UserError, match=re.escape(f"--save-dir {save_dir} already holds a run (last.pth): continue "
                                                  "it with --resume auto or choose another --save-dir")):
        parse_args(tiny_args(train_data_root, save_dir))
    args = parse_args(tiny_args(train_data_root, save_dir, "--epochs", "2", "--resume", "auto"))
    assert args.resume == str(save_dir / "last.pth")


@pytest.mark.parametrize(("argv", "message"), [
    (["--freeze-epochs", "5", "--epochs", "2", "--pretrained"], "--freeze-epochs 5 is greater than --epochs 2"),
    (["--freeze-epochs", "3", "--epochs", "4"], "--freeze-epochs 3 would freeze a random backbone: load backbone "
                                                "weights with --pretrained or --weights PATH"),
    (["--nonfinite-limit", "0"], "--nonfinite-limit"),
    (["--backbone", "resnet"], "--backbone"),
    (["--optimizer", "rmsprop"], "--optimizer"),
    (["--input-size", "16"], "--input-size"),
    (["--batch-size", "1"], "--batch-size"),
    (["--min-lr", "1"], "--min-lr"),
    (["--num-classes", "9"], "contradicts --classes"),
    (["--class-weights", "1,2"], "--class-weights"),
    (["--resume", "nowhere.pth"], "--resume"),
    (["--weights", "nowhere.pth"], "--weights"),
])
def test_bad_flags_are_named(argv, message, train_data_root, tmp_path):
    with pytest.raises(UserError, match=re.escape(message)):
        main(parse_args(tiny_args(train_data_root, tmp_path / "run", *argv)))


def test_bad_data_is_explained(train_data_root, tmp_path):
    with pytest.raises(UserError, match="larger than the training split"):
        main(parse_args(tiny_args(train_data_root, tmp_path / "a", "--batch-size", "16")))
    empty = tmp_path / "empty"
    (empty / "JPEGImages").mkdir(parents=True)
    (empty / "SegmentationClass").mkdir()
    (empty / "ImageSets" / "Segmentation").mkdir(parents=True)
    (empty / "ImageSets" / "Segmentation" / "train.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        main(parse_args([*tiny_args(train_data_root, tmp_path / "b"), "--data-root", str(empty)]))


def test_resume_with_another_model_is_explained(smoke_run, train_data_root, tmp_path):
    _, save_dir = smoke_run
    with pytest.raises(UserError, match="trained with the mobilenet backbone, but this run has the xception backbone"):
        main(parse_args(tiny_args(train_data_root, tmp_path / "x", "--backbone", "xception", "--epochs", "2",
                                  "--resume", str(save_dir / "last.pth"))))
    with pytest.raises(UserError, match="trained with 4 classes, but this run has 3 classes"):
        argv = tiny_args(train_data_root, tmp_path / "y", "--epochs", "2", "--resume", str(save_dir / "last.pth"))
        main(parse_args([*argv, "--classes", str(_three_classes(tmp_path))]))


def _three_classes(tmp_path: Path) -> Path:
    path = tmp_path / "three.txt"
    path.write_text("background\na\nb\n")
    return path


def test_cli_errors_exit_2_without_traceback(train_data_root, tmp_path):
    cases = [
        ["--data-root", str(tmp_path / "missing"), "--epochs", "1", "--freeze-epochs", "0", "--device", "cpu",
         "--save-dir", str(tmp_path / "m")],
        tiny_args(train_data_root, tmp_path / "f", "--freeze-epochs", "3"),
    ]
    for argv in cases:
        result = subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, result.stderr


def test_nan_loss_stops_and_keeps_the_last_checkpoint(train_data_root, tmp_path, monkeypatch):
    # Epoch 1 (4 batches + 2 val batches) is fine; from the first batch of epoch 2 on the loss is NaN.
    poison_criterion(monkeypatch, lambda call: call > 6)
    save_dir = tmp_path / "nan"
    with pytest.raises(UserError, match="loss became nan at epoch 2"):
        main(parse_args(tiny_args(train_data_root, save_dir, "--epochs", "2", "--eval-period", "1")))
    ckpt = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values() if v.is_floating_point())
    assert np.isfinite(ckpt["best_miou"])


def test_amp_on_cpu_trains_in_bfloat16(train_data_root, tmp_path):
    save_dir = tmp_path / "amp"
    assert main(parse_args(tiny_args(train_data_root, save_dir, "--amp", "--eval-period", "1"))) == 0
    ckpt = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["train"]["amp"] is True and ckpt["scaler"] == {}  # no gradient scaler without CUDA
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # weights stay float32
    assert math.isfinite(float(ckpt["history"][0]["train_loss"]))


def test_weights_are_partially_loaded_with_a_report(smoke_run, train_data_root, tmp_path, capsys):
    _, save_dir = smoke_run
    argv = tiny_args(train_data_root, tmp_path / "ft", "--weights", str(save_dir / "last.pth"), "--eval-period", "9")
    args = parse_args([*argv, "--classes", str(_three_classes(tmp_path))])
    args.data_root = str(train_data_root)
    from utils.training.trainer import Trainer

    trainer = Trainer(args, DistContext())
    out = capsys.readouterr().out
    assert "cls_conv.weight: checkpoint has 4 classes, model has 3" in out
    source = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)["model"]
    own = trainer.parts.net.state_dict()
    assert torch.equal(own["backbone.features.0.0.weight"], source["backbone.features.0.0.weight"])
    assert own["cls_conv.weight"].shape[0] == 3


def test_checkpoint_with_the_former_schedule_state_resumes_like_a_current_one(smoke_run, train_data_root, tmp_path):
    """Checkpoints written before the LambdaLR schedule hold the hand-written scheduler's state (its position
    in epochs) and no ``initial_lr``: they continue at the same iteration, with the same learning rates."""
    _, save_dir = smoke_run
    current = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    former = dict(current, scheduler={"kind": "cos", "total_epochs": 1, "lr": 0.01, "min_lr": 1e-4,
                                      "position": 0.75, "last_lr": 1e-4})
    former["optimizer"]["param_groups"] = [{k: v for k, v in group.items() if k != "initial_lr"}
                                           for group in current["optimizer"]["param_groups"]]
    results = {}
    for name, ckpt in (("current", current), ("former", former)):
        run_dir = tmp_path / name
        run_dir.mkdir()
        save_checkpoint(ckpt, run_dir / "last.pth")
        argv = tiny_args(train_data_root, run_dir, "--epochs", "2", "--eval-period", "9", "--resume", "auto")
        assert main(parse_args(argv)) == 0
        results[name] = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    assert results["former"]["history"][-1]["lr"] == results["current"]["history"][-1]["lr"]
    for key, value in results["current"]["model"].items():
        assert torch.equal(value, results["former"]["model"][key]), key
