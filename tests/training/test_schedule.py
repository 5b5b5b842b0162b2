"""The learning-rate recipe: batch scaling, the cos/step schedules, and LambdaLR stepping through the phases."""

from __future__ import annotations

import io
import itertools
import math
import pickle

import pytest
import torch

from utils.training.optim import build_optimizer
from utils.training.schedule import (
    Phase,
    SchedulePlan,
    build_scheduler,
    lr_at,
    lr_at_step,
    scaled_lr,
    seek,
    steps_before,
)

# Two phases as train.py builds them: 2 frozen epochs of 3 batches, then 4 unfrozen epochs of 5 batches.
PLAN = SchedulePlan("cos", 6, (Phase("frozen", 2, 3, 0.05, 5e-4), Phase("unfrozen", 4, 5, 0.1, 1e-3)))


def _optimizer(name: str = "sgd") -> torch.optim.Optimizer:
    return build_optimizer(name, [torch.nn.Parameter(torch.zeros(1))], 0.1, 0.9, 1e-4)


def _expected_lrs(plan: SchedulePlan) -> list[float]:
    """The lr of every iteration, worked out epoch by epoch and batch by batch."""
    lrs, epoch = [], 0
    for phase in plan.phases:
        for _ in range(phase.epochs):
            for index in range(phase.batches):
                lrs.append(lr_at(plan.kind, plan.total_epochs, phase.lr, phase.min_lr, epoch + index / phase.batches))
            epoch += 1
    return lrs


def test_lr_is_scaled_by_batch_and_clamped():
    assert scaled_lr("sgd", 8, 7e-3, 7e-5) == pytest.approx((3.5e-3, 3.5e-5))
    assert scaled_lr("sgd", 4, 7e-3, 7e-5) == pytest.approx((1.75e-3, 1.75e-5))
    assert scaled_lr("sgd", 1024, 7e-3, 7e-5) == pytest.approx((1e-1, 1e-3))  # clamped high
    assert scaled_lr("sgd", 1, 1e-3, 1e-5) == pytest.approx((5e-4, 5e-6))  # clamped low
    assert scaled_lr("adam", 8, 7e-3, 7e-5) == pytest.approx((5e-4, 5e-6))
    assert scaled_lr("adamw", 2, 1e-3, 1e-5) == pytest.approx((3e-4, 3e-6))


def test_cosine_schedule_warms_up_decays_and_ends_flat():
    assert lr_at("cos", 100, 0.1, 0.001, 0.0) == pytest.approx(0.01)  # warmup starts at a tenth
    assert lr_at("cos", 100, 0.1, 0.001, 1.5) == pytest.approx(0.01 + 0.09 * 0.25)  # quadratic warmup over 3 epochs
    assert lr_at("cos", 100, 0.1, 0.001, 3.0) == pytest.approx(0.1)
    values = [lr_at("cos", 100, 0.1, 0.001, e / 4) for e in range(12, 4 * 85)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    # Half-way through the cosine (between warmup end 3 and flat start 85) the lr is the mean of the bounds.
    assert lr_at("cos", 100, 0.1, 0.001, 44.0) == pytest.approx((0.1 + 0.001) / 2)
    assert lr_at("cos", 100, 0.1, 0.001, 85) == pytest.approx(0.001)
    assert lr_at("cos", 100, 0.1, 0.001, 99.9) == pytest.approx(0.001)
    optimizer = _optimizer()
    build_scheduler(optimizer, SchedulePlan("cos", 100, (Phase("unfrozen", 100, 10, 0.1, 0.001),)))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # set for the first iteration at once


def test_step_schedule_goes_from_lr_to_min_lr_in_ten_steps():
    assert lr_at("step", 100, 1e-3, 1e-5, 5) == pytest.approx(1e-3)
    assert lr_at("step", 100, 1e-3, 1e-5, 95) == pytest.approx(1e-5)
    assert len({round(lr_at("step", 100, 1e-3, 1e-5, e), 12) for e in range(100)}) == 10


def test_unknown_schedule_lists_the_choices():
    with pytest.raises(ValueError, match="cos.*step"):
        lr_at("linear", 10, 0.1, 0.001, 1.0)


def test_lambda_lr_steps_per_iteration_through_both_phases():
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, PLAN)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    seen = []
    for _ in range(2 * 3 + 4 * 5):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = _expected_lrs(PLAN)
    assert seen == expected  # the function gives the lr itself (base lr 1): no rounding on the way
    # The phase change: the last frozen iteration uses the frozen bounds, the first unfrozen one the unfrozen bounds.
    assert seen[5] == lr_at("cos", 6, 0.05, 5e-4, 1 + 2 / 3) and seen[6] == lr_at("cos", 6, 0.1, 1e-3, 2.0)
    assert [lr_at_step(step, PLAN) for step in range(len(expected))] == expected


def test_steps_before_counts_the_batches_of_each_phase():
    for epoch, iteration in itertools.product(range(6), range(3)):
        by_hand = sum(3 if e < 2 else 5 for e in range(epoch)) + iteration
        assert steps_before(PLAN, epoch, iteration) == by_hand


def test_scheduler_state_round_trips_through_a_weights_only_checkpoint():
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, PLAN)
    for _ in range(8):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    other_optimizer = _optimizer()
    other = build_scheduler(other_optimizer, PLAN)
    other_optimizer.load_state_dict(state["optimizer"])
    other.load_state_dict(state["scheduler"])
    assert other.last_epoch == 8 and other_optimizer.param_groups[0]["lr"] == _expected_lrs(PLAN)[8]
    other_optimizer.step()
    other.step()
    assert other_optimizer.param_groups[0]["lr"] == _expected_lrs(PLAN)[9]
    # The schedule function itself pickles (DataLoader workers, deep copies), though no state of it is saved.
    assert pickle.loads(pickle.dumps(scheduler.lr_lambdas[0]))(9) == _expected_lrs(PLAN)[9]


def test_seek_continues_a_schedule_without_its_state():
    optimizer = _optimizer()
    scheduler = build_scheduler(optimizer, PLAN)
    seek(scheduler, 11)
    assert scheduler.last_epoch == 11 and optimizer.param_groups[0]["lr"] == _expected_lrs(PLAN)[11]
    seek(scheduler, 11)  # already there: nothing moves
    assert scheduler.last_epoch == 11 and optimizer.param_groups[0]["lr"] == _expected_lrs(PLAN)[11]
    assert not math.isnan(optimizer.param_groups[0]["lr"])
