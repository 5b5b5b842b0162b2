"""The trainer's phases: the backbone's weights are fixed in the frozen phase (its BatchNorm statistics adapt,
as in the original, unless --freeze-bn) and train after; each phase has its own batch size and lr bounds."""

from __future__ import annotations

import pytest
import torch

from train import parse_args
from utils.training.distributed import DistContext
from utils.training.schedule import Phase, lr_at, scaled_lr
from utils.training.trainer import Trainer


def backbone_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.parts.net.backbone.state_dict().items()}


def frozen_run_args(root, weights, save_dir, *extra: str) -> list[str]:
    return ["--data-root", str(root), "--classes", str(root / "classes.txt"), "--weights", str(weights),
            "--input-size", "64", "--epochs", "2", "--freeze-epochs", "1", "--freeze-batch-size", "4",
            "--batch-size", "2", "--workers", "0", "--device", "cpu", "--save-dir", str(save_dir), *extra]


def is_statistic(key: str) -> bool:
    return key.endswith(("running_mean", "running_var", "num_batches_tracked"))


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_frozen_epoch_keeps_backbone_and_unfrozen_epoch_trains_it(train_data_root, init_weights, tmp_path,
                                                                  freeze_bn):
    args = parse_args(frozen_run_args(train_data_root, init_weights, tmp_path, *(["--freeze-bn"] * freeze_bn)))
    trainer = Trainer(args, DistContext())
    before = backbone_state(trainer)
    head_before = trainer.parts.net.cls_conv.weight.detach().clone()

    frozen_bounds = scaled_lr("sgd", 4, args.lr, args.min_lr)
    unfrozen_bounds = scaled_lr("sgd", 2, args.lr, args.min_lr)
    # 8 training images: 2 batches of 4 in the frozen epoch, then 4 batches of 2.
    assert trainer.parts.plan.phases == (Phase("frozen", 1, 2, *frozen_bounds),
                                         Phase("unfrozen", 1, 4, *unfrozen_bounds))
    trainer.enter_phase(True)
    assert trainer.train_loader.batch_size == 4
    optimizer = trainer.parts.optimizer
    assert optimizer.param_groups[0]["lr"] == lr_at("cos", 2, *frozen_bounds, 0.0)
    trainer.train_epoch(0)
    # The scheduler stepped per iteration and now stands at the first unfrozen one, with the unfrozen bounds.
    assert trainer.parts.scheduler.last_epoch == 2
    assert optimizer.param_groups[0]["lr"] == lr_at("cos", 2, *unfrozen_bounds, 1.0)
    after_frozen = backbone_state(trainer)
    for key, value in before.items():
        if freeze_bn or not is_statistic(key):
            assert torch.equal(value, after_frozen[key]), f"{key} changed while frozen"
    # By default the backbone's BatchNorm statistics follow the batches while its weights stay fixed.
    statistics_moved = not torch.equal(before["features.0.1.running_mean"], after_frozen["features.0.1.running_mean"])
    assert statistics_moved is not freeze_bn
    assert after_frozen["features.5.conv.1.num_batches_tracked"] == (0 if freeze_bn else 2)
    assert not torch.equal(head_before, trainer.parts.net.cls_conv.weight)
    head_bn = trainer.parts.net.cat_conv[1].num_batches_tracked.item()
    assert head_bn > 0  # the head's BatchNorm does update

    trainer.enter_phase(False)
    assert trainer.train_loader.batch_size == 2
    assert all(p.requires_grad for p in trainer.parts.net.backbone.parameters())
    trainer.train_epoch(1)
    after = backbone_state(trainer)
    assert not torch.equal(after["features.0.0.weight"], before["features.0.0.weight"])
    assert not torch.equal(after["features.0.1.running_mean"], before["features.0.1.running_mean"])
    assert after["features.0.1.num_batches_tracked"] > before["features.0.1.num_batches_tracked"]


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_frozen_backbone_mode_survives_evaluation(train_data_root, init_weights, tmp_path, freeze_bn):
    args = parse_args(frozen_run_args(train_data_root, init_weights, tmp_path, "--freeze-batch-size", "2",
                                      *(["--freeze-bn"] * freeze_bn)))
    trainer = Trainer(args, DistContext())
    trainer.enter_phase(True)
    trainer.evaluate(1)
    assert trainer.parts.net.training
    assert trainer.parts.net.backbone.training is not freeze_bn  # --freeze-bn: BatchNorm in eval mode
    assert not any(p.requires_grad for p in trainer.parts.net.backbone.parameters())
