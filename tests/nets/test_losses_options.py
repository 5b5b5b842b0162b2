"""The loss functions' shared calling convention (``(logits, target, *, options)``), binary class
weights in the region terms against a NumPy formula, focal under --boundary-weight, and train.py's
refusal of --boundary-weight without a pixel-wise term."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import nets.losses
from nets.losses import bce_loss, build_criterion, dice_loss, focal_loss, logdice_loss, tversky_loss

REPO = Path(__file__).resolve().parents[2]
# Every public loss function (parse_loss and check_loss read a spec: not losses).
LOSS_FNS = [getattr(nets.losses, name) for name in nets.losses.__all__
            if name.endswith("_loss") and name not in ("parse_loss", "check_loss")]
OPTION_NAMES = {"cls_weights", "ignore_index", "weight", "alpha", "beta", "gamma", "smooth"}


def test_the_catalogue_is_complete():
    names = {fn.__name__ for fn in LOSS_FNS}
    assert names == {"ce_loss", "bce_loss", "focal_loss", "dice_loss", "logdice_loss", "tversky_loss", "lovasz_loss"}


@pytest.mark.parametrize("fn", LOSS_FNS, ids=lambda fn: fn.__name__)
def test_every_option_is_keyword_only_and_named_alike(fn):
    params = list(inspect.signature(fn).parameters.values())
    assert [p.name for p in params[:2]] == ["logits", "target"]
    assert all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in params[:2])
    options = params[2:]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in options), fn.__name__
    names = {p.name for p in options}
    assert names <= OPTION_NAMES
    assert "ignore_index" in names
    assert ("cls_weights" in names) == (fn.__name__ != "lovasz_loss")  # Lovász takes no class weights


@pytest.mark.parametrize("fn", LOSS_FNS, ids=lambda fn: fn.__name__)
def test_a_positional_third_argument_is_a_type_error(fn):
    channels = 1 if fn.__name__ == "bce_loss" else 2
    logits, target = torch.zeros(1, channels, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    fn(logits, target)  # the two positional arguments are fine
    with pytest.raises(TypeError, match="positional"):
        fn(logits, target, torch.tensor([1.0, 3.0]))


def test_bce_class_weights_by_keyword_are_a_weighted_mean():
    # The call of the issue, bce_loss(x, t, torch.tensor([1., 3.])), used to reach ignore_index and
    # fail on a size mismatch; by keyword the weights give sum(w[t] * -log p_t) / sum(w[t]).
    x = np.array([0.3, -1.2, 2.0])
    t = np.array([1, 0, 1])
    w = np.array([1.0, 3.0])[t]
    p_true = np.where(t == 1, 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(x)))
    expected = (w * -np.log(p_true)).sum() / w.sum()
    got = bce_loss(torch.tensor(x).reshape(1, 1, 1, 3), torch.tensor(t).reshape(1, 1, 3),
                   cls_weights=torch.tensor([1.0, 3.0]))
    assert got.item() == pytest.approx(expected, rel=1e-12)


# ---- binary region terms with class weights: NumPy per-class formula ----

SMOOTH = 1e-5
X = np.array([[1.5, -0.4, 0.2], [-2.0, 0.9, 3.0]])  # one image, 2 x 3 logits
T = np.array([[1, 0, 255], [0, 1, 1]])  # one ignored pixel


def _np_tversky_scores(alpha, beta, smooth):
    """(background, foreground) Tversky scores of X against T, from sums over the valid pixels."""
    valid = T != 255
    p_fg = 1 / (1 + np.exp(-X[valid]))
    y_fg = (T[valid] == 1).astype(float)
    scores = []
    for p, y in ((1 - p_fg, 1 - y_fg), (p_fg, y_fg)):
        tp, fp, fn = (p * y).sum(), (p * (1 - y)).sum(), ((1 - p) * y).sum()
        scores.append((tp + smooth) / (tp + alpha * fp + beta * fn + smooth))
    return np.array(scores)


def _np_dice_scores():
    # (2 tp + s) / (2 tp + fp + fn + s) = Tversky(1/2, 1/2) with smooth s/2.
    return _np_tversky_scores(0.5, 0.5, SMOOTH / 2)


def _weighted(scores, w):
    return (np.asarray(w) * scores).sum() / np.sum(w)


BINARY_REGION = [
    ("dice", lambda x, t, w: dice_loss(x, t, cls_weights=w), lambda w: 1 - _weighted(_np_dice_scores(), w),
     lambda: 1 - _np_dice_scores()[1]),
    ("logdice", lambda x, t, w: logdice_loss(x, t, cls_weights=w),
     lambda w: -np.log(_weighted(_np_dice_scores(), w)), lambda: -np.log(_np_dice_scores()[1])),
    ("tversky", lambda x, t, w: tversky_loss(x, t, alpha=0.3, beta=0.7, cls_weights=w),
     lambda w: 1 - _weighted(_np_tversky_scores(0.3, 0.7, SMOOTH), w),
     lambda: 1 - _np_tversky_scores(0.3, 0.7, SMOOTH)[1]),
]


def _xt():
    return torch.tensor(X).reshape(1, 1, 2, 3), torch.tensor(T).reshape(1, 2, 3)


@pytest.mark.parametrize(("name", "ours", "weighted_formula", "foreground_formula"), BINARY_REGION,
                         ids=[case[0] for case in BINARY_REGION])
@pytest.mark.parametrize("weights", [[0.7, 2.5], [3.0, 1.0], [1.0, 1.0]])
def test_binary_region_terms_weight_both_class_scores(name, ours, weighted_formula, foreground_formula, weights):
    x, t = _xt()
    got = ours(x, t, torch.tensor(weights, dtype=torch.float64))
    assert got.item() == pytest.approx(weighted_formula(weights), rel=1e-10)


@pytest.mark.parametrize(("name", "ours", "weighted_formula", "foreground_formula"), BINARY_REGION,
                         ids=[case[0] for case in BINARY_REGION])
def test_binary_region_terms_default_to_the_foreground_score(name, ours, weighted_formula, foreground_formula):
    x, t = _xt()
    unweighted = ours(x, t, None).item()
    assert unweighted == pytest.approx(foreground_formula(), rel=1e-10)
    # No class weights is the weights (0, 1); equal weights also count the background's score.
    assert ours(x, t, torch.tensor([0.0, 1.0], dtype=torch.float64)).item() == pytest.approx(unweighted, rel=1e-12)
    assert ours(x, t, torch.tensor([1.0, 1.0], dtype=torch.float64)).item() != pytest.approx(unweighted, rel=1e-3)
    # Only the weights' ratio matters.
    assert ours(x, t, torch.tensor([2.0, 6.0], dtype=torch.float64)).item() == pytest.approx(
        ours(x, t, torch.tensor([1.0, 3.0], dtype=torch.float64)).item(), rel=1e-12)


@pytest.mark.parametrize("fn", [dice_loss, logdice_loss, tversky_loss])
def test_binary_region_terms_refuse_a_wrong_number_of_class_weights(fn):
    x, t = _xt()
    with pytest.raises(ValueError, match="needs 2 values, one per class \\(background, foreground"):
        fn(x, t, cls_weights=torch.ones(3))


# ---- focal under --boundary-weight ----

def test_boundary_weight_reweights_focal_exactly():
    # A 6 x 6 map with a 2 x 2 object at rows/cols 2..3: height 6 gives a 3 x 3 window, and the border
    # pixels (weight 3) are those whose 3 x 3 neighbourhood holds both classes: the 4 x 4 block at 1..4.
    target = np.zeros((6, 6), dtype=np.int64)
    target[2:4, 2:4] = 1
    target[5, 0] = 255
    border = np.ones((6, 6))
    border[1:5, 1:5] = 3.0
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 6, 6))
    cls_w = np.array([0.5, 2.0, 1.0])
    probs = np.exp(logits) / np.exp(logits).sum(axis=0)
    valid = target != 255
    t = np.where(valid, target, 0)
    p_t = np.take_along_axis(probs, t[None], axis=0)[0]
    w = cls_w[t] * border * valid
    alpha, gamma = 0.5, 2.0
    expected = (alpha * w * (1 - p_t) ** gamma * -np.log(p_t)).sum() / w.sum()
    unweighted = (alpha * (w / border) * (1 - p_t) ** gamma * -np.log(p_t)).sum() / (w / border).sum()

    x, y = torch.tensor(logits)[None], torch.tensor(target)[None]
    criterion = build_criterion("focal", cls_weights=torch.tensor(cls_w), boundary_weight=True)
    assert criterion(x, y).item() == pytest.approx(expected, rel=1e-10)
    assert focal_loss(x, y, cls_weights=torch.tensor(cls_w)).item() == pytest.approx(unweighted, rel=1e-10)
    assert expected != pytest.approx(unweighted, rel=1e-3)
    # The same weights passed by hand as the per-pixel weight.
    by_hand = focal_loss(x, y, cls_weights=torch.tensor(cls_w), weight=torch.tensor(border)[None])
    assert by_hand.item() == pytest.approx(expected, rel=1e-10)


def test_a_pixel_weight_of_the_wrong_shape_is_refused():
    x, t = torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"weight must have the target's shape \(2, 4, 4\)"):
        focal_loss(x, t, weight=torch.ones(4, 4))


def test_train_refuses_boundary_weight_with_dice_only(tmp_path):
    # The data root does not exist: should the loss check be skipped, the run still stops at once,
    # with another message, and the assertions below fail.
    argv = ["--data-root", str(tmp_path / "missing"), "--loss", "dice", "--boundary-weight", "--epochs", "1",
            "--freeze-epochs", "0", "--device", "cpu", "--save-dir", str(tmp_path / "run")]
    result = subprocess.run([sys.executable, "train.py", *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "--loss dice:" in errors[0]
    assert "boundary_weight reweights the pixel-wise terms (ce, bce, focal)" in errors[0]
    assert "as in dice+ce" in errors[0]
    assert not (tmp_path / "run").exists()
