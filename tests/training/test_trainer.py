"""The trainer's phases: the backbone (weights and BatchNorm statistics) is fixed in the frozen phase and
trains after; each phase has its own batch size and learning-rate bounds."""

from __future__ import annotations

import torch

from train import parse_args
from utils.training.distributed import DistContext
from utils.training.schedule import Phase, lr_at, scaled_lr
from utils.training.trainer import Trainer


def backbone_state(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.parts.net.backbone.state_dict().items()}


def test_frozen_epoch_keeps_backbone_and_unfrozen_epoch_trains_it(train_data_root, tmp_path):
    args = parse_args(["--data-root", str(train_data_root), "--classes", str(train_data_root / "classes.txt"),
                       "--input-size", "64", "--epochs", "2", "--freeze-epochs", "1", "--freeze-batch-size", "4",
                       "--batch-size", "2", "--workers", "0", "--device", "cpu", "--save-dir", str(tmp_path)])
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
        assert torch.equal(value, after_frozen[key]), f"{key} changed while frozen"
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


def test_frozen_backbone_stays_in_eval_mode_after_evaluation(train_data_root, tmp_path):
    args = parse_args(["--data-root", str(train_data_root), "--classes", str(train_data_root / "classes.txt"),
                       "--input-size", "64", "--epochs", "2", "--freeze-epochs", "1", "--freeze-batch-size", "2",
                       "--batch-size", "2", "--workers", "0", "--device", "cpu", "--save-dir", str(tmp_path)])
    trainer = Trainer(args, DistContext())
    trainer.enter_phase(True)
    trainer.evaluate(1)
    assert trainer.parts.net.training and not trainer.parts.net.backbone.training
