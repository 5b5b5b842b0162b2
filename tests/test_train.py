"""train.py end to end on a tiny dataset, the learning-rate recipe, and the messages for bad input."""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from train import main, parse_args
from utils import training
from utils.checkpoint import CHECKPOINT_FORMAT, load_model
from utils.data import load_image
from utils.distributed import DistContext
from utils.errors import UserError
from utils.predictor import Predictor
from utils.training import EpochLR, build_optimizer, parse_class_weights, prepare_demo_data, scaled_lr

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
    for key in ("model", "optimizer", "scheduler", "scaler", "epoch", "best_miou", "rng", "config", "format"):
        assert key in ckpt, key
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["epoch"] == 1
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert ckpt["config"]["class_names"] == ["background", "circle", "rectangle", "triangle"]
    assert ckpt["config"]["backbone"] == "mobilenet" and ckpt["config"]["downsample_factor"] == 16


def test_checkpoint_loads_for_prediction_without_flags(smoke_run, train_data_root):
    _, save_dir = smoke_run
    model, config = load_model(save_dir / "best.pth")
    assert config["num_classes"] == 4 and config["input_size"] == [64, 64]
    assert model.cls_conv.out_channels == 4
    image = load_image(next((train_data_root / "JPEGImages").iterdir()))
    mask = Predictor.from_weights(save_dir / "best.pth", device="cpu").predict([image])[0]
    assert mask.shape == image.shape[:2] and mask.max() < 4


def test_lr_is_scaled_by_batch_and_clamped():
    assert scaled_lr("sgd", 8, 7e-3, 7e-5) == pytest.approx((3.5e-3, 3.5e-5))
    assert scaled_lr("sgd", 4, 7e-3, 7e-5) == pytest.approx((1.75e-3, 1.75e-5))
    assert scaled_lr("sgd", 1024, 7e-3, 7e-5) == pytest.approx((1e-1, 1e-3))  # clamped high
    assert scaled_lr("sgd", 1, 1e-3, 1e-5) == pytest.approx((5e-4, 5e-6))  # clamped low
    assert scaled_lr("adam", 8, 7e-3, 7e-5) == pytest.approx((5e-4, 5e-6))
    assert scaled_lr("adamw", 2, 1e-3, 1e-5) == pytest.approx((3e-4, 3e-6))


def test_cosine_schedule_warms_up_decays_and_ends_flat():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer("sgd", [param], 0.1, 0.9, 1e-4)
    scheduler = EpochLR(optimizer, "cos", 100, lr=0.1, min_lr=0.001)
    assert scheduler.step(0.0) == pytest.approx(0.01)  # warmup starts at a tenth
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    assert scheduler.lr_at(1.5) == pytest.approx(0.01 + 0.09 * 0.25)  # quadratic warmup over 3 epochs
    assert scheduler.lr_at(3.0) == pytest.approx(0.1)
    values = [scheduler.lr_at(e / 4) for e in range(12, 4 * 85)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert scheduler.lr_at(85) == pytest.approx(0.001) and scheduler.lr_at(99.9) == pytest.approx(0.001)
    state = scheduler.state_dict()
    other = EpochLR(optimizer, "cos", 100, lr=1.0, min_lr=0.5)
    other.load_state_dict(state)
    assert other.lr_at(40.0) == scheduler.lr_at(40.0)


def test_step_schedule_goes_from_lr_to_min_lr_in_ten_steps():
    optimizer = build_optimizer("adamw", [torch.nn.Parameter(torch.zeros(1))], 1e-3, 0.9, 1e-2)
    scheduler = EpochLR(optimizer, "step", 100, lr=1e-3, min_lr=1e-5)
    assert scheduler.lr_at(5) == pytest.approx(1e-3)
    assert scheduler.lr_at(95) == pytest.approx(1e-5)
    assert len({round(scheduler.lr_at(e), 12) for e in range(100)}) == 10


def test_optimizers_follow_the_recipe():
    param = [torch.nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer("sgd", param, 0.1, 0.9, 1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.9
    assert isinstance(build_optimizer("adamw", param, 1e-3, 0.9, 1e-2), torch.optim.AdamW)
    adam = build_optimizer("adam", param, 1e-3, 0.8, 0)
    assert type(adam) is torch.optim.Adam and adam.defaults["betas"] == (0.8, 0.999)


def test_class_weights(train_data_root):
    from utils.data import SegmentationDataset

    dataset = SegmentationDataset(train_data_root, "train", (64, 64), 4, True)
    assert parse_class_weights("1, 2,2,0.5", 4, dataset).tolist() == [1.0, 2.0, 2.0, 0.5]
    with pytest.raises(UserError, match="4 classes"):
        parse_class_weights("1,2", 4, dataset)
    auto = parse_class_weights("auto", 4, dataset)
    assert auto.shape == (4,) and bool((auto > 0).all())
    # Background covers most pixels, so median-frequency balancing gives it the smallest weight.
    assert int(auto.argmin()) == 0


def test_demo_defaults_yield_to_explicit_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_root = tmp_path / "demo_data"
    args = parse_args(["--demo", "--epochs", "3", "--data-root", str(data_root), "--lr", "0.02"])
    assert args.epochs == 3 and args.lr == 0.02  # given
    assert args.input_size == [128, 128] and args.backbone == "mobilenet" and not args.pretrained  # demo
    assert args.num_classes == 4 and args.class_names[0] == "background"
    # Parsing only sets flags: the data is written after the process group exists, by rank 0.
    assert not data_root.exists()
    prepare_demo_data(args, DistContext())
    assert (data_root / "ImageSets" / "Segmentation" / "train.txt").is_file()


def test_demo_data_is_written_by_rank_0_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    waited = []
    monkeypatch.setattr(training, "barrier", lambda ctx: waited.append(ctx.rank))
    args = parse_args(["--demo", "--data-root", str(tmp_path / "demo_data")])
    prepare_demo_data(args, DistContext(rank=1, local_rank=1, world_size=2))
    assert not (tmp_path / "demo_data").exists() and waited == [1]  # rank 1 writes nothing, but waits
    prepare_demo_data(args, DistContext(rank=0, world_size=2))
    assert (tmp_path / "demo_data" / "classes.txt").is_file() and waited == [1, 0]


def test_new_run_never_overwrites_a_finished_one(smoke_run, train_data_root):
    _, save_dir = smoke_run
    with pytest.raises(UserError, match=re.escape(f"--save-dir {save_dir} already holds a run (last.pth): continue "
                                                  "it with --resume auto or choose another --save-dir")):
        parse_args(tiny_args(train_data_root, save_dir))
    args = parse_args(tiny_args(train_data_root, save_dir, "--epochs", "2", "--resume", "auto"))
    assert args.resume == str(save_dir / "last.pth")


def test_demo_without_save_dir_picks_a_free_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = ["--data-root", str(tmp_path / "data")]
    assert parse_args(["--demo", *data]).save_dir == str(Path("logs/demo"))
    for name in ("demo", "demo_2"):
        (tmp_path / "logs" / name).mkdir(parents=True)
        (tmp_path / "logs" / name / "last.pth").write_bytes(b"x")
    assert parse_args(["--demo", *data]).save_dir == str(Path("logs/demo_3"))
    assert parse_args(["--demo", *data, "--resume", "auto"]).save_dir == str(Path("logs/demo"))
    with pytest.raises(UserError, match="already holds a run"):
        parse_args(["--demo", *data, "--save-dir", "logs/demo_2"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--freeze-epochs", "5", "--epochs", "2"], "--freeze-epochs 5 is greater than --epochs 2"),
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
    import utils.training as training

    real = training.build_criterion

    def poisoned(*args, **kwargs):
        criterion = real(*args, **kwargs)
        calls = {"n": 0}

        def wrapped(logits, target):
            calls["n"] += 1
            value = criterion(logits, target)
            # Epoch 1 (4 batches + 2 val batches) is fine; the first batch of epoch 2 diverges.
            return value * float("nan") if calls["n"] > 6 else value

        return wrapped

    monkeypatch.setattr(training, "build_criterion", poisoned)
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
    assert ckpt["config"]["amp"] is True and ckpt["scaler"] == {}  # no gradient scaler without CUDA
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())  # weights stay float32
    assert math.isfinite(float(ckpt["history"][0]["train_loss"]))


def test_weights_are_partially_loaded_with_a_report(smoke_run, train_data_root, tmp_path, capsys):
    _, save_dir = smoke_run
    argv = tiny_args(train_data_root, tmp_path / "ft", "--weights", str(save_dir / "last.pth"), "--eval-period", "9")
    args = parse_args([*argv, "--classes", str(_three_classes(tmp_path))])
    args.data_root = str(train_data_root)
    from utils.distributed import DistContext
    from utils.training import Trainer

    trainer = Trainer(args, DistContext())
    out = capsys.readouterr().out
    assert "cls_conv.weight: checkpoint has 4 classes, model has 3" in out
    source = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)["model"]
    own = trainer.net.state_dict()
    assert torch.equal(own["backbone.features.0.0.weight"], source["backbone.features.0.0.weight"])
    assert own["cls_conv.weight"].shape[0] == 3
