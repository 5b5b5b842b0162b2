"""The initialisation rules of nets/init.py, measured on built models.

For a model built without a file, the weights of each convolution family (depthwise 3x3,
pointwise 1x1, dense 3x3, the classifier) have the spread the rule promises, within sampling
error; BatchNorm scales and every bias are what the rule says. With an ImageNet file loaded,
the file's tensors are bitwise unchanged and only the head follows the rule. The expected
spreads are computed here from each layer's shape, not read from nets/init.py.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import pytest
import torch
from torch import nn

from nets import pretrained
from nets.init import DEFAULT_INIT
from nets.mobilenetv2 import MobileNetV2
from nets.spec import ModelSpec, build_model
from train import main, parse_args

# Standard errors a measured std or mean may stray from its expectation. The draws are seeded, so
# the test is deterministic; this margin is what a correct rule needs under any seed (a 6-SE miss
# across the few dozen checks of a run has a probability far below 1e-6).
SE_MARGIN = 6.0
# Fourth moment / sigma^4 of the two distributions the rules draw from; it sets the std's standard error.
KURTOSIS = {"normal": 3.0, "uniform": 1.8}


def family(name: str, conv: nn.Conv2d) -> str:
    """The convolution family of a layer: its role, which decides the rule's spread."""
    if name == "cls_conv":
        return "classifier"
    if conv.groups > 1 and conv.groups == conv.in_channels:
        return "depthwise 3x3"
    if conv.kernel_size == (1, 1):
        return "pointwise 1x1"
    return "dense 3x3"


def expected_std(rule: str, conv: nn.Conv2d, name: str = "") -> tuple[float, str]:
    """(std, distribution) of a freshly initialised weight of ``conv`` (named ``name``) under ``rule``.

    normal: N(0, 0.02). kaiming: torchvision MobileNetV2's ``kaiming_normal_(mode="fan_out")``,
    N(0, sqrt(2 / fan_out)) with fan_out = out * kh * kw: torch counts every output channel, groups
    or not, which is what keeps a depthwise 3x3 narrow (std 0.083 for 32 channels; dividing by the
    groups would make it 0.47); its classifier, like torchvision's, N(0, 0.01).
    pytorch: Kaiming-uniform with a = sqrt(5) from the fan-in
    (in / groups * kh * kw), i.e. U(-b, b) with b = 1 / sqrt(fan_in), whose std is b / sqrt(3).
    """
    kh, kw = conv.kernel_size
    if rule == "normal":
        return 0.02, "normal"
    if rule == "kaiming" and family(name, conv) == "classifier":
        return 0.01, "normal"
    if rule == "kaiming":
        fan_out = conv.out_channels * kh * kw
        return math.sqrt(2.0 / fan_out), "normal"
    fan_in = conv.in_channels / conv.groups * kh * kw
    return 1.0 / math.sqrt(3.0 * fan_in), "uniform"


def assert_spread(values: torch.Tensor, what: str, dist: str = "normal") -> None:
    """Standardised ``values`` have mean 0 and std 1 within SE_MARGIN standard errors of those estimates."""
    n = values.numel()
    # Var(s^2) = (mu4 - sigma^4) / n, so se(s) = sigma * sqrt(kurtosis - 1) / (2 sqrt(n)); here sigma = 1.
    se_std = math.sqrt(KURTOSIS[dist] - 1.0) / (2.0 * math.sqrt(n))
    measured_mean, measured_std = values.double().mean().item(), values.double().std().item()
    assert abs(measured_mean) < SE_MARGIN / math.sqrt(n), f"{what}: mean {measured_mean:.5f} x expected std, want 0"
    assert abs(measured_std - 1.0) < SE_MARGIN * se_std, (
        f"{what}: std {measured_std:.5f} x expected, want 1 +- {SE_MARGIN * se_std:.5f} ({n} weights)")


def assert_conv_rule(model: nn.Module, rule: str,
                     families: tuple[str, ...] = ("depthwise 3x3", "pointwise 1x1", "dense 3x3", "classifier")
                     ) -> None:
    """Every conv of ``model`` follows ``rule``, layer by layer and pooled per family (weights divided by
    their expected std, so each pool should have mean 0 and std 1); ``families`` are the ones it must hold."""
    pooled: dict[tuple[str, str], list[torch.Tensor]] = defaultdict(list)
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Conv2d):
            std, dist = expected_std(rule, layer, name)
            values = layer.weight.detach().flatten() / std
            assert_spread(values, f"{name} ({family(name, layer)})", dist)
            pooled[(family(name, layer), dist)].append(values)
    assert {kind for kind, _ in pooled} == set(families)
    for (kind, dist), tensors in pooled.items():
        assert_spread(torch.cat(tensors), f"{kind} family", dist)


def batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [layer for layer in model.modules() if isinstance(layer, nn.BatchNorm2d)]


def build(rule: str | None, head: str = "standard", seed: int = 0, **spec: object) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(backbone="mobilenet", num_classes=5, head=head, **spec), init=rule)


@pytest.mark.parametrize("head", ["standard", "separable"])
@pytest.mark.parametrize("rule", ["normal", "kaiming", "pytorch"])
def test_conv_weights_follow_the_rule_in_every_family(rule, head):
    assert_conv_rule(build(rule, head), rule)


def test_the_check_tells_the_rules_apart():
    # The spread check is sharp enough to fail: a model of one rule does not pass for another.
    for built, claimed in (("normal", "kaiming"), ("kaiming", "normal"), ("pytorch", "normal"), ("normal", "pytorch")):
        with pytest.raises(AssertionError):
            assert_conv_rule(build(built), claimed)


def test_normal_rule_batchnorm_scales_and_all_biases():
    model = build("normal")
    scales = torch.cat([bn.weight.detach() for bn in batch_norms(model)])
    assert_spread((scales - 1.0) / 0.02, "BN scales (N(1, 0.02))")
    assert not torch.all(scales == 1.0)
    for bn in batch_norms(model):
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    biased = [layer for layer in model.modules() if isinstance(layer, nn.Conv2d) and layer.bias is not None]
    assert biased, "the head's convolutions carry biases"
    for layer in biased:
        assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


@pytest.mark.parametrize("head", ["standard", "separable"])
def test_kaiming_rule_batchnorm_scales_are_one_and_biases_zero(head):
    model = build("kaiming", head)
    for bn in batch_norms(model):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d) and layer.bias is not None:
            assert torch.equal(layer.bias, torch.zeros_like(layer.bias))


def test_pytorch_rule_keeps_the_layer_defaults():
    model = build("pytorch")
    for bn in batch_norms(model):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.bias, torch.zeros_like(bn.bias))
    # PyTorch's conv bias default is U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zero.
    assert model.cls_conv.bias.abs().max() > 0


def test_default_and_spec_rules_and_seeding():
    default = build(None)
    assert_conv_rule(default, DEFAULT_INIT)
    reference = build(DEFAULT_INIT)
    for (key, a), b in zip(default.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b), key  # same seed, same rule: the same model
    # Without an explicit rule the spec's recorded one applies.
    other = "kaiming" if DEFAULT_INIT == "normal" else "normal"
    assert_conv_rule(build(None, init=other), other)


def test_unknown_rule_is_a_value_error_listing_the_rules():
    with pytest.raises(ValueError) as info:
        build("xavier")
    for rule in ("normal", "kaiming", "pytorch", "'xavier'"):
        assert rule in str(info.value)
    with pytest.raises(ValueError, match="normal, kaiming, pytorch"):
        ModelSpec(init="xavier")


@pytest.fixture
def fake_imagenet_file(tmp_path, monkeypatch):
    """A MobileNetV2 ImageNet-style file of distinctive values in tmp_path, found by build_model(pretrained=True)."""
    generator = torch.Generator().manual_seed(7)
    state = {key: (torch.rand(value.shape, generator=generator) * 4 - 2).to(value.dtype)
             if value.is_floating_point() else value + 3
             for key, value in MobileNetV2().state_dict().items()}
    state["classifier.1.weight"] = torch.zeros(1000, 1280)  # the classification head the file also holds
    torch.save(state, tmp_path / "mobilenet_v2.pth.tar")
    # load_imagenet_backbone binds MODEL_DIR as a default when it is defined, so point the loader itself
    # at tmp_path (build_model imports it at call time); fetch_backbone_file then finds the file, no download.
    monkeypatch.setattr(pretrained, "load_imagenet_backbone",
                        functools.partial(pretrained.load_imagenet_backbone, model_dir=tmp_path))
    return state


@pytest.mark.parametrize("rule", ["normal", "kaiming"])
def test_loaded_tensors_are_bitwise_unchanged_and_the_head_follows_the_rule(fake_imagenet_file, rule):
    torch.manual_seed(0)
    model = build_model(ModelSpec(backbone="mobilenet", num_classes=5), pretrained=True, init=rule)
    backbone = model.backbone.state_dict()
    assert set(backbone) <= set(fake_imagenet_file)
    for key, value in backbone.items():
        assert value.dtype == fake_imagenet_file[key].dtype and torch.equal(value, fake_imagenet_file[key]), key
    head = nn.ModuleDict({name: child for name, child in model.named_children() if name != "backbone"})
    assert_conv_rule(head, rule, ("pointwise 1x1", "dense 3x3", "classifier"))
    head_scales = torch.cat([bn.weight.detach() for bn in batch_norms(head)])
    if rule == "kaiming":
        assert torch.equal(head_scales, torch.ones_like(head_scales))
    else:
        assert_spread((head_scales - 1.0) / 0.02, "head BN scales (N(1, 0.02))")


def test_train_prints_the_rule_and_records_it(train_data_root, tmp_path, capsys):
    save_dir = tmp_path / "run"
    argv = ["--data-root", str(train_data_root), "--classes", str(train_data_root / "classes.txt"),
            "--input-size", "32", "--epochs", "1", "--freeze-epochs", "0", "--batch-size", "2", "--workers", "0",
            "--device", "cpu", "--eval-period", "9", "--save-dir", str(save_dir), "--init", "kaiming"]
    assert main(parse_args(argv)) == 0
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("init")]
    assert len(summary) == 1 and "kaiming" in summary[0] and "fan-out" in summary[0]
    ckpt = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True)
    assert ckpt["spec"]["init"] == "kaiming"
