"""Losses against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from nets.losses import build_criterion, ce_loss, dice_loss, focal_loss

LN2 = math.log(2.0)


def _two_pixels(extra_ignored: bool = False):
    """Pixel A: logits (0, 0), target 0 -> p_t = 1/2. Pixel B: logits (ln 3, 0), target 1 -> p_t = 1/4."""
    logits = [[0.0, math.log(3.0)], [0.0, 0.0]]
    target = [0, 1]
    if extra_ignored:
        logits[0].append(5.0)
        logits[1].append(-3.0)
        target.append(255)
    logits_t = torch.tensor(logits).reshape(1, 2, 1, -1).requires_grad_(True)
    return logits_t, torch.tensor(target).reshape(1, 1, -1)


def test_ce_is_mean_over_valid_pixels():
    logits, target = _two_pixels()
    assert ce_loss(logits, target).item() == pytest.approx((LN2 + 2 * LN2) / 2, rel=1e-6)


def test_ce_class_weights_follow_weighted_mean():
    logits, target = _two_pixels()
    w = torch.tensor([1.0, 3.0])
    assert ce_loss(logits, target, cls_weights=w).item() == pytest.approx((1 * LN2 + 3 * 2 * LN2) / 4, rel=1e-6)


@pytest.mark.parametrize("fn", [ce_loss, focal_loss, dice_loss])
def test_ignored_pixels_change_nothing(fn):
    a, ta = _two_pixels()
    b, tb = _two_pixels(extra_ignored=True)
    assert fn(a, ta).item() == pytest.approx(fn(b, tb).item(), rel=1e-6)
    fn(b, tb).backward()
    assert torch.all(b.grad[..., 2] == 0)


@pytest.mark.parametrize("fn", [ce_loss, focal_loss, dice_loss])
def test_all_ignored_batch_gives_zero_loss_and_zero_gradient(fn):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), 255)
    loss = fn(logits, target)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert torch.all(logits.grad == 0)


def test_focal_by_hand():
    logits, target = _two_pixels()
    # alpha * (1 - p)^gamma * -log p for p = 1/2 and p = 1/4, divided by the pixel count (w = 1).
    expected = 0.5 * ((0.5**2) * LN2 + (0.75**2) * 2 * LN2) / 2
    assert focal_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_focal_with_weights_divides_by_weight_sum():
    logits, target = _two_pixels()
    w = torch.tensor([2.0, 1.0])
    expected = 0.5 * (2 * (0.5**2) * LN2 + 1 * (0.75**2) * 2 * LN2) / 3
    assert focal_loss(logits, target, cls_weights=w).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("weights", [None, torch.tensor([0.3, 1.0, 2.5])])
def test_focal_with_gamma0_alpha1_equals_ce(weights):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))
    target[0, 0, :3] = 255
    got = focal_loss(logits, target, cls_weights=weights, alpha=1.0, gamma=0.0)
    assert got.item() == pytest.approx(ce_loss(logits, target, cls_weights=weights).item(), rel=1e-5)


def test_dice_by_hand():
    logits = torch.zeros(1, 2, 1, 1)  # p = (1/2, 1/2)
    target = torch.zeros(1, 1, 1, dtype=torch.long)
    s = 1e-5
    score0 = (2 * 0.5 + s) / (2 * 0.5 + 0.5 + s)  # tp = .5, fn = .5, fp = 0
    score1 = s / (0.5 + s)  # tp = 0, fn = 0, fp = .5
    assert dice_loss(logits, target).item() == pytest.approx(1 - (score0 + score1) / 2, rel=1e-5)


def test_dice_of_a_perfect_prediction_is_near_zero():
    target = torch.randint(0, 4, (2, 8, 8))
    target[:, 0] = 255
    logits = torch.nn.functional.one_hot(target.clamp(max=3), 4).permute(0, 3, 1, 2).float() * 40
    assert dice_loss(logits, target).item() < 1e-4


def test_logits_are_resized_to_the_target_size():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 5)
    target = torch.randint(0, 3, (1, 7, 9))
    big = torch.nn.functional.interpolate(logits, size=(7, 9), mode="bilinear", align_corners=True)
    for fn in (ce_loss, focal_loss, dice_loss):
        assert fn(logits, target).item() == pytest.approx(fn(big, target).item(), rel=1e-6)


def test_build_criterion_adds_dice_and_rejects_unknown_loss():
    logits, target = _two_pixels()
    both = build_criterion("ce", dice=True)(logits, target)
    assert both.item() == pytest.approx((ce_loss(logits, target) + dice_loss(logits, target)).item(), rel=1e-6)
    with pytest.raises(ValueError, match="ce, focal"):
        build_criterion("hinge")
