"""Every loss term against a plain per-pixel reference written here, gradients included, plus the
ignore/all-ignored rules, class and border weights, binary/two-class consistency and loss specs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from nets.losses import (
    TERMS,
    bce_loss,
    boundary_kernel_size,
    boundary_weights,
    build_criterion,
    ce_loss,
    dice_loss,
    focal_loss,
    logdice_loss,
    lovasz_loss,
    parse_loss,
    tversky_loss,
)

IGNORE = 255
SMOOTH = 1e-5


# ---- independent references: python loops over pixels on float64 scalars (autograd still works) ----

def _pixels(target):
    """(n, i, j, label) for every non-ignored pixel."""
    n_, h, w = target.shape
    return [(n, i, j, int(target[n, i, j])) for n in range(n_) for i in range(h) for j in range(w)
            if int(target[n, i, j]) != IGNORE]


def _probs(logits, n, i, j):
    """Per-class probabilities of one pixel: sigmoid for one channel (foreground), softmax otherwise."""
    xs = [logits[n, c, i, j] for c in range(logits.shape[1])]
    if len(xs) == 1:
        return [1 / (1 + torch.exp(-xs[0]))]
    exps = [torch.exp(x) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def _p_true(logits, n, i, j, label):
    probs = _probs(logits, n, i, j)
    if len(probs) == 1:
        return probs[0] if label == 1 else 1 - probs[0]
    return probs[label]


def ref_nll_mean(logits, target, cls_weights=None, pixel_weights=None):
    """Reference for ce (C >= 2) and bce (C == 1): sum(w * -log p_t) / sum(w)."""
    num, den = 0.0, 0.0
    for n, i, j, t in _pixels(target):
        w = (1.0 if cls_weights is None else float(cls_weights[t])) * (
            1.0 if pixel_weights is None else float(pixel_weights[n, i, j]))
        num = num + w * -torch.log(_p_true(logits, n, i, j, t))
        den += w
    return num / den if den else torch.tensor(0.0, dtype=torch.float64)


def ref_focal(logits, target, cls_weights=None, alpha=0.5, gamma=2.0, pixel_weights=None):
    """sum(alpha * w * (1 - p_t)^gamma * -log p_t) / sum(w), w = class weight times pixel weight."""
    num, den = 0.0, 0.0
    for n, i, j, t in _pixels(target):
        w = (1.0 if cls_weights is None else float(cls_weights[t])) * (
            1.0 if pixel_weights is None else float(pixel_weights[n, i, j]))
        p = _p_true(logits, n, i, j, t)
        num = num + alpha * w * (1 - p) ** gamma * -torch.log(p)
        den += w
    return num / den


def _ref_counts(logits, target, both_classes=False):
    """Soft tp, fp, fn per class summed over valid pixels. Binary: the foreground only, or with
    both_classes the background (probability 1 - p) and then the foreground."""
    binary = logits.shape[1] == 1
    labels = ([0, 1] if both_classes else [1]) if binary else list(range(logits.shape[1]))
    k = len(labels)
    tp, fp, fn = [0.0] * k, [0.0] * k, [0.0] * k
    for n, i, j, t in _pixels(target):
        probs = _probs(logits, n, i, j)
        if binary and both_classes:
            probs = [1 - probs[0], probs[0]]
        for c in range(k):
            truth = float(t == labels[c])
            tp[c] = tp[c] + probs[c] * truth
            fp[c] = fp[c] + probs[c] * (1 - truth)
            fn[c] = fn[c] + (1 - probs[c]) * truth
    return tp, fp, fn


def _mean(scores, cls_weights):
    if cls_weights is None:
        return sum(scores) / len(scores)
    return sum(float(w) * s for w, s in zip(cls_weights, scores, strict=True)) / float(sum(cls_weights))


def ref_dice_score(logits, target, cls_weights=None, beta=1.0):
    tp, fp, fn = _ref_counts(logits, target, both_classes=cls_weights is not None)
    b2 = beta * beta
    scores = [((1 + b2) * a + SMOOTH) / ((1 + b2) * a + b2 * c + b + SMOOTH) for a, b, c in zip(tp, fp, fn,
                                                                                              strict=True)]
    return _mean(scores, cls_weights)


def ref_tversky(logits, target, cls_weights=None, alpha=0.5, beta=0.5):
    tp, fp, fn = _ref_counts(logits, target, both_classes=cls_weights is not None)
    scores = [(a + SMOOTH) / (a + alpha * b + beta * c + SMOOTH) for a, b, c in zip(tp, fp, fn, strict=True)]
    return 1 - _mean(scores, cls_weights)


def ref_lovasz_extension(errors, positives):
    """Lovász extension of the Jaccard set loss, straight from its definition as a threshold integral:
    f(m) = sum_j (v_j - v_{j+1}) * Jaccard_loss({i: m_i >= v_j}) over the distinct error values
    v_1 > v_2 > ... (v_{k+1} = 0), with Jaccard_loss(S) = |S| / |positives U S|."""
    by_value = {e.item(): e for e in errors if e.item() > 0}  # keeps the tensors for autograd
    levels = [*sorted(by_value, reverse=True), 0.0]
    total = 0.0
    for v, below in itertools.pairwise(levels):
        s = {i for i, e in enumerate(errors) if e.item() >= v}
        loss_of_set = len(s) / len(positives | s)
        total = total + (by_value[v] - by_value.get(below, 0.0)) * loss_of_set
    return total


def ref_lovasz(logits, target):
    pixels = _pixels(target)
    if logits.shape[1] == 1:
        positives = {k for k, (*_, t) in enumerate(pixels) if t == 1}
        errors = [torch.relu(1 - logits[n, 0, i, j] * (1 if t == 1 else -1)) for n, i, j, t in pixels]
        return ref_lovasz_extension(errors, positives)
    per_class = []
    for c in range(logits.shape[1]):
        positives = {k for k, (*_, t) in enumerate(pixels) if t == c}
        if positives:  # Lovász-softmax over the classes present
            errors = [torch.abs(float(t == c) - _probs(logits, n, i, j)[c]) for n, i, j, t in pixels]
            per_class.append(ref_lovasz_extension(errors, positives))
    return sum(per_class) / len(per_class)


def ref_boundary_weights(mask, k, num_classes, binary=False):
    """Loop version: for each pixel, class fractions among the valid pixels of its clipped k x k window."""
    n_, h, w = mask.shape
    out = torch.ones(n_, h, w)
    r = k // 2
    for n in range(n_):
        for i in range(h):
            for j in range(w):
                window = [int(mask[n, a, b]) for a in range(max(0, i - r), min(h, i + r + 1))
                          for b in range(max(0, j - r), min(w, j + r + 1))]
                window = [v for v in window if v != IGNORE]
                if not window:
                    continue
                classes = [1] if binary else range(num_classes)
                fractions = [window.count(c) / len(window) for c in classes]
                if any(0.01 <= f <= 0.99 for f in fractions):
                    out[n, i, j] = 3.0
    return out


# ---- shared inputs ----

MC_WEIGHTS = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
BIN_WEIGHTS = torch.tensor([0.7, 2.5], dtype=torch.float64)


def _inputs(mode, seed=0, shape=(2, 4, 5)):
    """float64 logits needing grad and a target with a few ignored pixels; the multi-class target never
    holds class 3, which the logits still predict (absent class: Dice false positives, Lovász 'present')."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = shape
    channels = 1 if mode == "binary" else 4
    logits = (2 * torch.randn(n, channels, h, w, generator=g, dtype=torch.float64)).requires_grad_(True)
    target = torch.randint(0, 2 if mode == "binary" else 3, (n, h, w), generator=g)
    target[0, 0, :3] = IGNORE
    target[-1, -1, 1] = IGNORE
    return logits, target


PIXEL_TERMS = ("ce", "bce", "focal")  # the terms --boundary-weight reweights
# Every (term, mode) that exists: ce is multi-class only, bce binary only.
TERM_MODES = [(t, m) for m in ("multiclass", "binary") for t in TERMS if (t, m) not in {("ce", "binary"),
                                                                                        ("bce", "multiclass")}]


def _weights(mode):
    return BIN_WEIGHTS if mode == "binary" else MC_WEIGHTS


# (term, mode, our loss, the reference); both take (logits, target, cls_weights).
CASES = [
    ("ce", "multiclass", lambda x, t, w: ce_loss(x, t, cls_weights=w), ref_nll_mean),
    ("bce", "binary", lambda x, t, w: bce_loss(x, t, cls_weights=w), ref_nll_mean),
    *[("focal", m, lambda x, t, w: focal_loss(x, t, cls_weights=w), ref_focal) for m in ("multiclass", "binary")],
    *[("dice", m, lambda x, t, w: dice_loss(x, t, cls_weights=w), lambda x, t, w: 1 - ref_dice_score(x, t, w))
      for m in ("multiclass", "binary")],
    *[("logdice", m, lambda x, t, w: logdice_loss(x, t, cls_weights=w),
       lambda x, t, w: -torch.log(ref_dice_score(x, t, w))) for m in ("multiclass", "binary")],
    *[("tversky", m, lambda x, t, w: tversky_loss(x, t, alpha=0.3, beta=0.7, cls_weights=w),
       lambda x, t, w: ref_tversky(x, t, w, alpha=0.3, beta=0.7)) for m in ("multiclass", "binary")],
    *[("lovasz", m, lambda x, t, w: lovasz_loss(x, t), lambda x, t, w: ref_lovasz(x, t))
      for m in ("multiclass", "binary")],
]
CASE_IDS = [f"{term}-{mode}" for term, mode, *_ in CASES]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "class-weighted"])
@pytest.mark.parametrize(("term", "mode", "ours", "reference"), CASES, ids=CASE_IDS)
def test_value_and_gradient_match_the_reference(term, mode, ours, reference, weighted):
    logits, target = _inputs(mode)
    cls_weights = _weights(mode) if weighted else None
    got = ours(logits, target, cls_weights)
    (grad,) = torch.autograd.grad(got, logits)
    expected = reference(logits, target, cls_weights)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize(("term", "mode", "ours", "reference"), CASES, ids=CASE_IDS)
def test_gradcheck(term, mode, ours, reference):
    logits, target = _inputs(mode, seed=1, shape=(1, 3, 3))
    assert torch.autograd.gradcheck(lambda x: ours(x, target, _weights(mode)), (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(("term", "mode", "ours", "reference"), CASES, ids=CASE_IDS)
def test_ignored_pixels_change_nothing(term, mode, ours, reference):
    logits, target = _inputs(mode, seed=2)
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    noisy = torch.where(ignored, 50 * torch.randn_like(logits), logits.detach()).requires_grad_(True)
    base = ours(logits, target, _weights(mode))
    other = ours(noisy, target, _weights(mode))
    assert other.item() == pytest.approx(base.item(), rel=1e-12, abs=1e-15)
    other.backward()
    assert torch.all(noisy.grad[ignored] == 0)
    assert torch.any(noisy.grad[~ignored] != 0)


@pytest.mark.parametrize("boundary", [False, True], ids=["plain", "boundary"])
@pytest.mark.parametrize(("term", "mode"), TERM_MODES)
def test_all_ignored_batch_gives_exactly_zero_and_zero_gradients(term, mode, boundary):
    spec = term
    if boundary and term not in PIXEL_TERMS:  # border weights need a pixel-wise term to reweight
        spec = f"{term}+{'bce' if mode == 'binary' else 'ce'}"
    criterion = build_criterion(spec, mode, cls_weights=_weights(mode).float(), boundary_weight=boundary)
    logits = torch.randn(2, 1 if mode == "binary" else 4, 4, 6, requires_grad=True)
    loss = criterion(logits, torch.full((2, 4, 6), IGNORE))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize("mode", ["multiclass", "binary"])
def test_no_data_dependent_operation_in_any_term(mode):
    """Meta tensors carry no values: .item(), boolean-mask indexing, nonzero or a Python branch on a tensor
    all raise on them, so running (and back-propagating) every term here proves the losses never read a
    value on the host, i.e. never synchronise with the GPU."""
    spec = "+".join(t for t, m in TERM_MODES if m == mode)
    criterion = build_criterion(spec, mode, cls_weights=torch.ones(2 if mode == "binary" else 3),
                                boundary_weight=True)
    logits = torch.randn(2, 1 if mode == "binary" else 3, 8, 8, device="meta", requires_grad=True)
    target = torch.zeros(2, 16, 16, dtype=torch.long, device="meta")
    loss = criterion(logits, target)
    assert loss.shape == () and loss.dtype == torch.float32
    loss.backward()
    assert logits.grad.shape == logits.shape


@pytest.mark.parametrize(("term", "mode"), TERM_MODES)
def test_logits_are_resized_and_computed_in_float32_under_autocast(term, mode):
    torch.manual_seed(0)
    criterion = build_criterion(term, mode)
    logits = torch.randn(2, 1 if mode == "binary" else 3, 4, 5).bfloat16()
    target = torch.randint(0, 2, (2, 7, 9))
    big = F.interpolate(logits.float(), size=(7, 9), mode="bilinear", align_corners=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = criterion(logits, target)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(criterion(big, target).item(), rel=1e-6)


# ---- hand-worked values and special cases ----

def test_lovasz_hinge_by_hand():
    # Errors relu(1 - x * sign): 0, 0 and 1.5 (a negative pixel at 0.5). Only that pixel is in the set
    # {errors >= 1.5}; positives = {pixel 0}, so the Jaccard loss of the set is 1/2 and the loss 1.5/2.
    logits = torch.tensor([2.0, -1.0, 0.5]).reshape(1, 1, 1, 3)
    target = torch.tensor([1, 0, 0]).reshape(1, 1, 3)
    assert lovasz_loss(logits, target).item() == pytest.approx(0.75)


def test_lovasz_softmax_averages_over_present_classes_only():
    logits = torch.zeros(1, 3, 1, 2)  # p = 1/3 everywhere; class 2 absent from the target
    target = torch.tensor([[[0, 1]]])
    # class 0: errors 2/3 (its pixel) and 1/3 (the other): (2/3 - 1/3) * J({a}) + 1/3 * J({a, b}) = 1/3 * 1/1 ...
    # J({a}) = 1/|{a}| = 1, J({a, b}) = 2/2 = 1 -> 1/3 + 1/3 = 2/3; class 1 is the same by symmetry.
    assert lovasz_loss(logits, target).item() == pytest.approx(2 / 3)


def test_dice_beta_is_the_f_beta_score():
    logits, target = _inputs("multiclass", seed=3)
    got = dice_loss(logits, target, beta=2.0, cls_weights=MC_WEIGHTS)
    assert got.item() == pytest.approx(1 - ref_dice_score(logits, target, MC_WEIGHTS, beta=2.0).item(), rel=1e-9)


def test_tversky_at_one_half_is_dice():
    logits, target = _inputs("multiclass", seed=4)
    # Dice's (2 tp + s) / (2 tp + fn + fp + s) is Tversky's (tp + s/2) / (tp + fp/2 + fn/2 + s/2).
    got = tversky_loss(logits, target, smooth=SMOOTH / 2)
    assert got.item() == pytest.approx(dice_loss(logits, target, smooth=SMOOTH).item(), rel=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_ce_and_bce_with_pixel_weights_are_weighted_means(weighted):
    for mode, fn in (("multiclass", ce_loss), ("binary", bce_loss)):
        logits, target = _inputs(mode, seed=5)
        pixel = torch.rand(target.shape, dtype=torch.float64) + 0.5
        cls_weights = _weights(mode) if weighted else None
        got = fn(logits, target, cls_weights=cls_weights, weight=pixel)
        expected = ref_nll_mean(logits, target, cls_weights, pixel)
        assert got.item() == pytest.approx(expected.item(), rel=1e-9)


# ---- binary versus two-class consistency: a binary logit x is the two-class logits (0, x) ----

def _as_two_class(logits):
    return torch.cat([torch.zeros_like(logits), logits], dim=1)


@pytest.mark.parametrize(("binary_fn", "two_class_fn"), [
    (lambda x, t: bce_loss(x, t, cls_weights=BIN_WEIGHTS, weight=2 + t.clamp(max=1)),
     lambda x, t: ce_loss(x, t, cls_weights=BIN_WEIGHTS, weight=2 + t.clamp(max=1))),
    (lambda x, t: focal_loss(x, t, cls_weights=BIN_WEIGHTS), lambda x, t: focal_loss(x, t, cls_weights=BIN_WEIGHTS)),
    # The binary region losses score the foreground alone: the two-class loss restricted to class 1.
    (dice_loss, lambda x, t: dice_loss(x, t, cls_weights=torch.tensor([0.0, 1.0]))),
    (logdice_loss, lambda x, t: logdice_loss(x, t, cls_weights=torch.tensor([0.0, 1.0]))),
    (lambda x, t: tversky_loss(x, t, alpha=0.2, beta=0.8),
     lambda x, t: tversky_loss(x, t, alpha=0.2, beta=0.8, cls_weights=torch.tensor([0.0, 1.0]))),
    # With class weights (background, foreground) they score both classes, as the two-class model does.
    (lambda x, t: dice_loss(x, t, cls_weights=BIN_WEIGHTS), lambda x, t: dice_loss(x, t, cls_weights=BIN_WEIGHTS)),
    (lambda x, t: logdice_loss(x, t, cls_weights=BIN_WEIGHTS),
     lambda x, t: logdice_loss(x, t, cls_weights=BIN_WEIGHTS)),
    (lambda x, t: tversky_loss(x, t, alpha=0.2, beta=0.8, cls_weights=BIN_WEIGHTS),
     lambda x, t: tversky_loss(x, t, alpha=0.2, beta=0.8, cls_weights=BIN_WEIGHTS)),
], ids=["bce=ce", "focal", "dice", "logdice", "tversky", "dice-weighted", "logdice-weighted", "tversky-weighted"])
def test_binary_matches_two_class_on_the_foreground(binary_fn, two_class_fn):
    logits, target = _inputs("binary", seed=6)
    got = binary_fn(logits, target)
    assert got.item() == pytest.approx(two_class_fn(_as_two_class(logits), target).item(), rel=1e-9)


# ---- border weights ----

def test_boundary_weights_of_a_vertical_edge():
    mask = torch.zeros(1, 4, 6, dtype=torch.long)
    mask[..., 3:] = 1
    expected = torch.ones(1, 4, 6)
    expected[..., 2:4] = 3.0  # the two columns whose 3x3 window straddles the edge
    torch.testing.assert_close(boundary_weights(mask, 3), expected)


def test_boundary_weights_threshold_is_one_percent():
    mask = torch.zeros(1, 11, 11, dtype=torch.long)
    mask[0, 5, 5] = 1  # 1/121 < 0.01 in the centre's full 11x11 window: not a border
    assert boundary_weights(mask, 11)[0, 5, 5] == 1.0
    mask[0, 5, 6] = 1  # 2/121 >= 0.01: a border
    assert boundary_weights(mask, 11)[0, 5, 5] == 3.0
    mask[0, 5, 6] = 0
    mask[0, 0, :11] = IGNORE
    mask[0, 1, :10] = IGNORE  # 21 ignored: 1 foreground pixel in 100 valid is exactly 0.01, a border
    assert boundary_weights(mask, 11)[0, 5, 5] == 3.0
    mask[0, 1, 9] = 0  # 1 in 101: below 0.01
    assert boundary_weights(mask, 11)[0, 5, 5] == 1.0


def test_ignored_pixels_make_no_border():
    mask = torch.ones(1, 8, 8, dtype=torch.long)
    mask[0, 2:5, 3:6] = IGNORE  # void inside a uniform region, as in VOC's object outlines
    mask[0, :, 0] = IGNORE
    torch.testing.assert_close(boundary_weights(mask, 5, num_classes=3), torch.ones(1, 8, 8))


@pytest.mark.parametrize("k", [3, 5])
def test_boundary_weights_match_the_loop_version(k):
    g = torch.Generator().manual_seed(7)
    mask = torch.zeros(2, 9, 10, dtype=torch.long)
    mask[0, 2:7, 3:8] = 1
    mask[0, 4:6, 5:9] = 2
    mask[1] = torch.randint(0, 3, (9, 10), generator=g)
    mask[1, :3] = 0
    mask[0, :, 0] = IGNORE  # ignored pixels are left out of the fractions
    mask[1, 5:, 6:] = IGNORE
    got = boundary_weights(mask, k, num_classes=3)
    torch.testing.assert_close(got, ref_boundary_weights(mask, k, 3))
    assert set(got.unique().tolist()) == {1.0, 3.0}


def test_binary_boundary_weights_use_the_foreground_fraction():
    g = torch.Generator().manual_seed(8)
    mask = (torch.rand(1, 12, 12, generator=g) > 0.8).long()
    mask[0, :4, :4] = 0
    mask[0, 8:, 8:] = IGNORE
    torch.testing.assert_close(boundary_weights(mask, 5), ref_boundary_weights(mask, 5, 2, binary=True))


def test_boundary_kernel_size_follows_the_survey():
    assert [boundary_kernel_size(h) for h in (128, 256, 512, 1024)] == [11, 21, 21, 41]
    sizes = [boundary_kernel_size(h) for h in range(8, 4097, 8)]
    assert all(k % 2 == 1 and k >= 3 for k in sizes)
    assert sizes == sorted(sizes)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="height"):
            boundary_kernel_size(bad)
    with pytest.raises(ValueError, match="odd"):
        boundary_weights(torch.zeros(1, 4, 4, dtype=torch.long), 4)


@pytest.mark.parametrize(("spec", "mode", "fn", "reference"), [
    ("ce", "multiclass", ce_loss, ref_nll_mean),
    ("bce", "binary", bce_loss, ref_nll_mean),
    ("focal", "multiclass", focal_loss, ref_focal),
    ("focal", "binary", focal_loss, ref_focal),
], ids=["ce", "bce", "focal-multiclass", "focal-binary"])
def test_criterion_boundary_weight_reweights_every_pixel_term(spec, mode, fn, reference):
    logits, target = _inputs(mode, seed=9, shape=(2, 16, 16))
    target[0, 4:12, 4:12] = 1
    weights = _weights(mode)
    pixel = ref_boundary_weights(target, boundary_kernel_size(16), 4 if mode == "multiclass" else 2)
    assert set(pixel.unique().tolist()) == {1.0, 3.0}
    got = build_criterion(spec, mode, cls_weights=weights, boundary_weight=True)(logits, target)
    expected = reference(logits, target, weights, pixel_weights=pixel)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)
    assert got.item() != pytest.approx(fn(logits, target, cls_weights=weights).item(), rel=1e-6)


def test_criterion_boundary_weight_leaves_region_terms_alone():
    logits, target = _inputs("multiclass", seed=9, shape=(2, 16, 16))
    target[0, 4:12, 4:12] = 1
    pixel = ref_boundary_weights(target, boundary_kernel_size(16), 4)
    got = build_criterion("dice+focal", boundary_weight=True, cls_weights=MC_WEIGHTS)(logits, target)
    expected = 1 - ref_dice_score(logits, target, MC_WEIGHTS) + ref_focal(logits, target, MC_WEIGHTS,
                                                                         pixel_weights=pixel)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.parametrize(("spec", "mode", "suggestion"), [
    ("dice", "multiclass", "dice+ce"), ("0.5*lovasz+tversky", "multiclass", "0.5*lovasz+tversky+ce"),
    ("logdice", "binary", "logdice+bce"), ("dice", "binary", "dice+bce"),
])
def test_criterion_refuses_boundary_weight_without_a_pixel_term(spec, mode, suggestion):
    with pytest.raises(ValueError, match=r"pixel-wise terms \(ce, bce, focal\)") as info:
        build_criterion(spec, mode, boundary_weight=True)
    assert f"as in {suggestion}," in str(info.value)
    assert "drop --boundary-weight" in str(info.value)
    assert build_criterion(spec, mode).boundary_weight is False  # the spec alone is fine


def test_dice_flag_gives_boundary_weight_nothing_to_reweight():
    # dice=True (the old --dice) adds a region term only: still no pixel-wise term for the border weights.
    with pytest.raises(ValueError, match="loss 'lovasz\\+dice' has none"):
        build_criterion("lovasz", boundary_weight=True, dice=True)
    assert build_criterion("focal", boundary_weight=True, dice=True).boundary_weight is True


# ---- specs and the criterion ----

@pytest.mark.parametrize(("spec", "expected"), [
    ("ce", [(1.0, "ce")]),
    ("bce+dice", [(1.0, "bce"), (1.0, "dice")]),
    ("ce+0.5*lovasz", [(1.0, "ce"), (0.5, "lovasz")]),
    ("focal + 2*dice", [(1.0, "focal"), (2.0, "dice")]),
    (" BCE + 1e-1 * LogDice ", [(1.0, "bce"), (0.1, "logdice")]),
    ("0.3*tversky", [(0.3, "tversky")]),
])
def test_parse_loss_accepts(spec, expected):
    assert parse_loss(spec) == expected


@pytest.mark.parametrize(("spec", "message"), [
    ("", "empty term"), ("ce+", "empty term"), ("hinge", "unknown loss term 'hinge'"),
    ("ce+dise", "unknown loss term 'dise'"), ("0.5*", "empty term"), ("x*ce", "bad weight 'x'"),
    ("-1*ce", "bad weight"), ("0*dice", "bad weight"), ("nan*ce", "bad weight"), ("inf*ce", "bad weight"),
    ("2*0.5*dice", "bad weight"), ("ce+ce", "appears twice"),
])
def test_parse_loss_rejects(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        parse_loss(spec)
    if "weight" not in message and "twice" not in message:
        assert "ce, focal, bce, dice, logdice, lovasz, tversky" in str(info.value)


def test_criterion_is_the_weighted_sum_of_its_terms():
    logits, target = _inputs("multiclass", seed=10)
    got = build_criterion("ce+0.5*lovasz + 2*tversky", tversky_alpha=0.3, tversky_beta=0.7,
                          cls_weights=MC_WEIGHTS)(logits, target)
    expected = (ref_nll_mean(logits, target, MC_WEIGHTS) + 0.5 * ref_lovasz(logits, target)
                + 2 * ref_tversky(logits, target, MC_WEIGHTS, alpha=0.3, beta=0.7))
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)
    logits, target = _inputs("binary", seed=10)
    got = build_criterion("bce+dice", "binary", cls_weights=BIN_WEIGHTS)(logits, target)
    expected = ref_nll_mean(logits, target, BIN_WEIGHTS) + 1 - ref_dice_score(logits, target, BIN_WEIGHTS)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)


def test_dice_flag_appends_a_dice_term_once():
    logits, target = _inputs("multiclass", seed=11)
    old_style = build_criterion("focal", dice=True)(logits, target)
    assert old_style.item() == pytest.approx((focal_loss(logits, target) + dice_loss(logits, target)).item())
    assert build_criterion("focal+dice", dice=True).terms == [(1.0, "focal"), (1.0, "dice")]


def test_criterion_rejects_wrong_mode_terms_and_shapes():
    with pytest.raises(ValueError, match="'bce' does not exist in multiclass mode; use 'ce'"):
        build_criterion("bce+dice")
    with pytest.raises(ValueError, match="'ce' does not exist in binary mode; use 'bce'"):
        build_criterion("ce", "binary")
    with pytest.raises(ValueError, match="multiclass, binary"):
        build_criterion("ce", "multilabel")
    with pytest.raises(ValueError, match="2 class weights"):
        build_criterion("bce", "binary", cls_weights=torch.ones(3))
    with pytest.raises(ValueError, match="one output channel"):
        build_criterion("dice", "binary")(torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="use bce_loss"):
        ce_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="use ce_loss"):
        bce_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="one per class"):
        dice_loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long), cls_weights=torch.ones(2))


@pytest.mark.parametrize("elements", [1, 2 * 40, 3 * 40, 1 << 23])  # 40 pixels: 1, 2, 3 or all 4 classes
def test_lovasz_softmax_in_class_groups_is_the_same_loss(monkeypatch, elements):
    """Sorting a group of classes at a time (one class, two, all) changes neither value nor gradient."""
    from nets.losses import lovasz

    logits, target = _inputs("multiclass", seed=5)
    expected = ref_lovasz(logits.detach(), target)
    monkeypatch.setattr(lovasz, "SORT_ELEMENTS", elements)
    x = logits.detach().clone().requires_grad_()
    got = lovasz_loss(x, target)
    assert got.item() == pytest.approx(expected.item(), rel=1e-9)
    got.backward()
    monkeypatch.setattr(lovasz, "SORT_ELEMENTS", 1 << 23)
    y = logits.detach().clone().requires_grad_()
    lovasz_loss(y, target).backward()
    torch.testing.assert_close(x.grad, y.grad)
