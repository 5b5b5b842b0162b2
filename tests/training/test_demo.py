"""``train.py --demo``: its settings yield to given flags, its data is written by rank 0, its runs never collide."""

from __future__ import annotations

from pathlib import Path

import pytest

from train import parse_args
from utils.errors import UserError
from utils.training import demo
from utils.training.demo import prepare_demo_data
from utils.training.distributed import DistContext


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
    monkeypatch.setattr(demo, "barrier", lambda ctx: waited.append(ctx.rank))
    args = parse_args(["--demo", "--data-root", str(tmp_path / "demo_data")])
    prepare_demo_data(args, DistContext(rank=1, local_rank=1, world_size=2))
    assert not (tmp_path / "demo_data").exists() and waited == [1]  # rank 1 writes nothing, but waits
    prepare_demo_data(args, DistContext(rank=0, world_size=2))
    assert (tmp_path / "demo_data" / "classes.txt").is_file() and waited == [1, 0]


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
