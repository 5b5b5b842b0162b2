"""The training recipe's rules (issue 12): the frozen phase needs weights, batch splitting over processes,
the original's lr limits per backbone and optimizer, non-finite losses under AMP, the training precision
of in-training evaluation."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch

from train import main, parse_args
from utils.errors import UserError
from utils.training import builder, resume
from utils.training import trainer as trainer_module
from utils.training.builder import check_batch
from utils.training.distributed import DistContext
from utils.training.epoch import NonFiniteGuard, NonFiniteLossError, scaler_found_inf
from utils.training.logger import format_summary
from utils.training.options import TrainOptions
from utils.training.schedule import scaled_lr
from utils.training.validate import training_precision


def flags(root, save_dir, *extra: str) -> list[str]:
    return ["--data-root", str(root), "--classes", str(root / "classes.txt"), "--input-size", "64",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--save-dir", str(save_dir), *extra]


def test_no_frozen_phase_without_backbone_weights(train_data_root, init_weights, tmp_path):
    assert parse_args(flags(train_data_root, tmp_path / "a")).freeze_epochs == 0
    assert parse_args(flags(train_data_root, tmp_path / "b", "--pretrained")).freeze_epochs == 50
    assert parse_args(flags(train_data_root, tmp_path / "c", "--pretrained", "--epochs", "10")).freeze_epochs == 5
    assert parse_args(flags(train_data_root, tmp_path / "d", "--weights", str(init_weights))).freeze_epochs == 50
    assert parse_args(flags(train_data_root, tmp_path / "e", "--weights", str(init_weights), "--freeze-epochs",
                            "3")).freeze_epochs == 3
    assert parse_args(flags(train_data_root, tmp_path / "f", "--freeze-epochs", "0")).freeze_epochs == 0
    # --resume auto with nothing to resume is a new run from random weights.
    assert parse_args(flags(train_data_root, tmp_path / "g", "--resume", "auto")).freeze_epochs == 0


def _start_as_rank_1_of_2(monkeypatch, argv: list[str], rank0: tuple) -> list[tuple]:
    """train.py on rank 1 of a two-node torchrun, where rank 0's resume decision is ``rank0``.

    No process is launched: the broadcast hands over ``rank0`` and every rank can read the checkpoint.
    Returns the (resume, freeze epochs) the trainer started with.
    """
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    ctx = DistContext(rank=1, world_size=2)

    def broadcast(box: list, src: int) -> None:
        box[0] = rank0

    def all_gather(out: list, readable: bool) -> None:
        out[:] = [True] * len(out)

    monkeypatch.setattr(resume, "dist", SimpleNamespace(broadcast_object_list=broadcast, all_gather_object=all_gather))
    started: list[tuple] = []

    class Started:
        def __init__(self, options: TrainOptions, ctx: DistContext) -> None:
            started.append((options.resume, options.freeze_epochs))

        def fit(self) -> int:
            return 0

    monkeypatch.setattr(trainer_module, "init_distributed", lambda device: ctx)
    monkeypatch.setattr(trainer_module, "cleanup_distributed", lambda: None)
    monkeypatch.setattr(trainer_module, "prepare_demo_data", lambda options, ctx: None)
    monkeypatch.setattr(trainer_module, "Trainer", Started)
    assert main(parse_args(argv)) == 0
    return started


def test_frozen_phase_follows_rank_0s_resume_decision_under_torchrun(train_data_root, tmp_path, monkeypatch):
    # Rank 1's node holds a stale run/last.pth that rank 0's does not: rank 0 starts a new run from
    # random weights, so rank 1 must neither resume nor freeze (as if it had weights).
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    (save_dir / "last.pth").write_bytes(b"stale")
    argv = flags(train_data_root, save_dir, "--epochs", "10", "--resume", "auto")
    new_run = (None, f"--resume auto: no {save_dir / 'last.pth'} yet, starting a new run", None)
    assert _start_as_rank_1_of_2(monkeypatch, argv, new_run) == [(None, 0)]
    with pytest.raises(UserError, match="--freeze-epochs 3 would freeze a random backbone"):
        _start_as_rank_1_of_2(monkeypatch, [*argv, "--freeze-epochs", "3"], new_run)
    # Rank 0 resumes: every rank takes the frozen phase the checkpoint's run was started with.
    torch.save({"config": {"freeze_epochs": 2}}, save_dir / "last.pth")
    resumed = (str(save_dir / "last.pth"), None, None)
    assert _start_as_rank_1_of_2(monkeypatch, argv, resumed) == [(str(save_dir / "last.pth"), 2)]


def test_a_resumed_run_keeps_its_frozen_phase(train_data_root, init_weights, tmp_path):
    """The same flags plus --resume auto continue the phase plan the checkpoint's run started with: a run
    begun from random weights (no frozen phase) is not frozen on resuming, although a resume loads weights."""
    save_dir = tmp_path / "run"
    save_dir.mkdir()
    for recorded, expected in ((0, 0), (3, 3), (None, 5)):  # None: an older checkpoint; the default applies
        config = {} if recorded is None else {"freeze_epochs": recorded}
        torch.save({"config": config}, save_dir / "last.pth")
        args = parse_args(flags(train_data_root, save_dir, "--epochs", "10", "--resume", "auto"))
        assert (args.resume, args.freeze_epochs) == (str(save_dir / "last.pth"), expected)
    # An explicit --freeze-epochs still wins.
    args = parse_args(flags(train_data_root, save_dir, "--epochs", "10", "--resume", "auto", "--freeze-epochs", "4"))
    assert args.freeze_epochs == 4


def test_summary_says_why_there_is_no_frozen_phase(train_data_root, tmp_path):
    config = dict(parse_args(flags(train_data_root, tmp_path / "a")).settings(), input_size=[64, 64])
    extra = {"init": "random", "num_train": 8, "num_val": 4, "lr_note": "", "device": "cpu", "world_size": 1,
             "amp_dtype": "bfloat16"}
    text = format_summary(config, extra)
    assert "no frozen phase (no backbone weights loaded)" in text
    assert "standard head" in text
    frozen = dict(config, freeze_epochs=2, pretrained=True, freeze_bn=True)
    assert "2 with the backbone frozen at batch 8, BatchNorm statistics fixed" in format_summary(frozen, extra)


def batch_args(sync_bn: bool) -> TrainOptions:
    return TrainOptions(sync_bn=sync_bn, data_root="data")


@pytest.mark.parametrize(("batch", "world", "sync_bn", "used"), [
    (4, 4, True, 4),    # the README's torchrun line: 1 image per GPU, SyncBN sees all 4
    (8, 4, False, 8),
    (6, 4, True, 4),    # uneven: 1 per process, 4 in all
    (10, 4, False, 8),  # uneven: 2 per process, 8 in all
    (3, 1, False, 3),
])
def test_global_batch_actually_used(batch, world, sync_bn, used, capsys):
    ctx = DistContext(rank=0, world_size=world)
    assert check_batch("--batch-size", batch, list(range(64)), batch_args(sync_bn), ctx) == used
    out = capsys.readouterr().out
    if used != batch:
        assert out.strip() == (f"--batch-size {batch} does not split evenly over {world} processes: "
                               f"{used // world} per process, {used} in all; the learning rate is scaled for "
                               f"batch {used}")
    else:
        assert out == ""


def test_batch_errors_say_which_flag_to_use():
    ctx = DistContext(rank=1, world_size=4)
    with pytest.raises(UserError, match=re.escape("--batch-size 4 over 4 processes leaves 1 image(s) per process, "
                                                  "and BatchNorm needs 2 without --sync-bn: use --batch-size 8 or "
                                                  "more, or add --sync-bn (CUDA) for --batch-size 4")):
        check_batch("--batch-size", 4, list(range(64)), batch_args(False), ctx)
    with pytest.raises(UserError, match=re.escape("--freeze-batch-size 2 is smaller than the 4 processes: use "
                                                  "--freeze-batch-size 4 or more")):
        check_batch("--freeze-batch-size", 2, list(range(64)), batch_args(True), ctx)
    with pytest.raises(UserError, match="larger than the training split"):
        check_batch("--batch-size", 16, list(range(12)), batch_args(False), ctx)


@pytest.mark.parametrize(("optimizer", "backbone", "low", "high"), [
    ("sgd", "mobilenet", 5e-4, 1e-1), ("sgd", "xception", 5e-4, 1e-1),
    ("adam", "mobilenet", 3e-4, 5e-4), ("adam", "xception", 1e-4, 1e-4),
    ("adamw", "mobilenet", 3e-4, 5e-4), ("adamw", "xception", 1e-4, 1e-4),
])
def test_lr_limits_of_the_original_for_every_backbone_and_optimizer(optimizer, backbone, low, high):
    for batch in (1, 2, 4, 8, 16, 64, 1024):
        for lr in (1e-5, 5e-4, 7e-3, 1.0):
            min_lr = lr / 100
            # The original's formula, written out: scale by batch / 16, clamp.
            expected = (min(max(batch / 16 * lr, low), high), min(max(batch / 16 * min_lr, low / 100), high / 100))
            assert scaled_lr(optimizer, batch, lr, min_lr, backbone) == pytest.approx(expected)
    assert scaled_lr("adam", 8, 5e-4, 5e-6, "xception") == pytest.approx((1e-4, 1e-6))


def test_guard_skips_until_the_limit_of_non_finite_losses_in_a_row():
    guard = NonFiniteGuard(limit=3)
    assert guard.check(1.0, 0, 0)
    assert not guard.check(math.nan, 0, 1)
    assert not guard.check(math.inf, 0, 2)
    assert guard.check(0.5, 0, 3) and guard.in_a_row == 0  # a finite loss resets the count
    assert not guard.check(math.nan, 1, 0)
    assert not guard.check(math.nan, 1, 1)
    with pytest.raises(NonFiniteLossError, match=re.escape("the loss became nan at epoch 2, iteration 3 "
                                                           "(3 steps in a row)")):
        guard.check(math.nan, 1, 2)
    with pytest.raises(NonFiniteLossError, match=re.escape("the loss became inf at epoch 1, iteration 1")):
        NonFiniteGuard().check(math.inf, 0, 0)


def test_scaler_flag_is_read_on_the_device_and_skips_the_update():
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    for factor, overflow in ((1.0, False), (math.inf, True)):
        before = weight.detach().clone()
        optimizer.zero_grad()
        scaler.scale((weight * factor).sum()).backward()
        found = scaler_found_inf(scaler, optimizer)
        assert found is not None and bool(found > 0) is overflow
        if not found:
            optimizer.step()
        scale = scaler.get_scale()
        scaler.update()
        if overflow:
            assert torch.equal(weight, before) and scaler.get_scale() == scale / 2
        else:
            # Unscaled before the step: the update is lr * 1, not lr * scale.
            assert torch.allclose(weight, before - 0.1)
    assert scaler_found_inf(torch.amp.GradScaler("cpu", enabled=False), optimizer) is None


def poison_criterion(monkeypatch, bad: Callable[[int], bool]) -> None:
    """Make the training loss NaN on the criterion calls (1-based) for which ``bad(call)`` holds."""
    real = builder.build_criterion

    def poisoned(*args, **kwargs):
        criterion = real(*args, **kwargs)
        calls = {"n": 0}

        def wrapped(logits, target):
            calls["n"] += 1
            value = criterion(logits, target)
            return value * float("nan") if bad(calls["n"]) else value

        return wrapped

    monkeypatch.setattr(builder, "build_criterion", poisoned)


def test_amp_skips_a_few_non_finite_steps_and_trains_on(train_data_root, tmp_path, monkeypatch, capsys):
    poison_criterion(monkeypatch, lambda call: call in (2, 3))
    # On a CPU without native bf16 the run says that --amp is slower there (and still trains).
    monkeypatch.setattr(builder, "cpu_has_native_bf16", lambda: False)
    argv = flags(train_data_root, tmp_path / "run", "--amp", "--epochs", "1", "--eval-period", "9")
    assert main(parse_args(argv)) == 0
    assert "--amp: this CPU has no native bf16" in capsys.readouterr().out
    ckpt = torch.load(tmp_path / "run" / "last.pth", map_location="cpu", weights_only=True)
    assert all(bool(torch.isfinite(v).all()) for v in ckpt["model"].values() if v.is_floating_point())
    assert ckpt["scheduler"]["last_epoch"] == 4  # skipped steps still advance the schedule
    assert math.isfinite(float(ckpt["history"][0]["train_loss"]))


def test_amp_stops_after_the_limit_in_a_row(train_data_root, tmp_path, monkeypatch):
    poison_criterion(monkeypatch, lambda call: call in (2, 3))
    argv = flags(train_data_root, tmp_path / "run", "--amp", "--epochs", "1", "--nonfinite-limit", "2")
    with pytest.raises(UserError, match=re.escape("the loss became nan at epoch 1, iteration 3 (2 steps in a row)")):
        main(parse_args(argv))


def test_in_training_evaluation_runs_in_the_training_precision():
    def parts(amp: bool, dtype: torch.dtype) -> SimpleNamespace:
        return SimpleNamespace(options=TrainOptions(amp=amp), amp_dtype=dtype)

    assert training_precision(parts(False, torch.bfloat16)) == "fp32"
    assert training_precision(parts(True, torch.bfloat16)) == "bf16"
    assert training_precision(parts(True, torch.float16)) == "fp16"


@pytest.mark.parametrize(("capability", "expected"), [("AVX512", True), ("AVX2", False), ("DEFAULT", False)])
def test_training_is_channels_last_on_cuda_and_avx512_cpus(monkeypatch, capability, expected):
    from utils import device as device_module

    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert device_module.channels_last_training(torch.device("cpu")) is expected
    assert device_module.channels_last_training(torch.device("cuda")) is True
    parts = builder.RunParts.__new__(builder.RunParts)
    parts.ctx = DistContext(device=torch.device("cpu"))
    assert parts.channels_last is expected
