"""DeepLabV3+ network: key compatibility, same function as the original, shapes, gradients, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nets.deeplabv3_plus import DeepLab, Dropout, freeze_backbone, unfreeze_backbone
from tests.original_reference import OriginalDeepLab

REFERENCE_KEYS = json.loads((Path(__file__).parents[1] / "fixtures" / "reference_state_dict_keys.json").read_text())
CONFIGS = [(b, s) for b in ("mobilenet", "xception") for s in (8, 16)]


def _randomise_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give BN layers non-trivial statistics so that ReLU placement changes the output."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)


@pytest.mark.parametrize("backbone", ["mobilenet", "xception"])
def test_state_dict_matches_reference_keys_and_shapes(backbone):
    state = DeepLab(21, backbone).state_dict()
    got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]
    assert got == REFERENCE_KEYS[backbone]


@pytest.mark.parametrize("backbone", ["mobilenet", "xception"])
def test_state_dict_from_reference_key_list_loads_strict(backbone):
    gen = torch.Generator().manual_seed(1)
    state = {}
    for key, shape, dtype in REFERENCE_KEYS[backbone]:
        if dtype == "int64":
            state[key] = torch.tensor(7)
        else:
            state[key] = torch.randn(shape, generator=gen)
    model = DeepLab(21, backbone)
    model.load_state_dict(state, strict=True)
    assert torch.equal(model.state_dict()["cls_conv.weight"], state["cls_conv.weight"])


@pytest.mark.parametrize(("backbone", "stride"), CONFIGS)
def test_computes_the_same_function_as_the_original(backbone, stride):
    torch.manual_seed(0)
    ours = DeepLab(5, backbone, downsample_factor=stride)
    _randomise_batchnorm(ours)
    original = OriginalDeepLab(5, backbone, downsample_factor=stride)
    original.load_state_dict(ours.state_dict(), strict=True)
    ours.eval()
    original.eval()
    x = torch.rand(2, 3, 67, 93)
    with torch.no_grad():
        expected = original(x.clone())
        got = ours(x)
    assert got.shape == (2, 5, 67, 93)
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * scale


def test_xception_shortcut_is_relu_of_block_input():
    torch.manual_seed(0)
    model = DeepLab(3, "xception").eval()
    block = model.backbone.block4
    x = torch.randn(1, 728, 9, 9)
    with torch.no_grad():
        out = block(x)
        residual = block.sepconv3(block.sepconv2(block.sepconv1(x)))
    assert torch.allclose(out, residual + torch.relu(x), atol=1e-5)
    assert not torch.allclose(out, residual + x, atol=1e-3)


@pytest.mark.parametrize(("backbone", "stride"), CONFIGS)
def test_any_input_size_gives_logits_of_that_size_and_finite_gradients(backbone, stride):
    torch.manual_seed(0)
    model = DeepLab(4, backbone, downsample_factor=stride).train()
    x = torch.rand(2, 3, 195, 257)
    logits = model(x)
    assert logits.shape == (2, 4, 195, 257)
    logits.logsumexp(dim=1).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def test_single_image_inference_shape():
    model = DeepLab(4, "mobilenet").eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 195, 257)).shape == (1, 4, 195, 257)


@pytest.mark.parametrize(("backbone", "stride"), CONFIGS)
def test_backbone_returns_low_level_feature_at_stride_4(backbone, stride):
    model = DeepLab(2, backbone, downsample_factor=stride).eval()
    with torch.no_grad():
        low, high = model.backbone(torch.rand(1, 3, 128, 128))
    assert low.shape[1:] == (model.backbone.low_level_channels, 32, 32)
    assert high.shape[1:] == (model.backbone.high_level_channels, 128 // stride, 128 // stride)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"num_classes": 3, "backbone": "resnet50"}, ["mobilenet", "xception", "resnet50"]),
        ({"num_classes": 3, "downsample_factor": 32}, ["8", "16", "32"]),
        ({"num_classes": 0}, ["num_classes", ">= 1"]),
    ],
)
def test_bad_configuration_raises_value_error_listing_allowed_values(kwargs, words):
    with pytest.raises(ValueError) as info:
        DeepLab(**kwargs)
    for word in words:
        assert word in str(info.value)


def _bn_buffers(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items() if "running" in k}


def test_freezing_fixes_backbone_parameters_and_batchnorm_statistics():
    torch.manual_seed(0)
    model = DeepLab(3, "mobilenet")
    freeze_backbone(model)
    model.train()
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.aspp.parameters())
    before_bn = _bn_buffers(model.backbone)
    before_head = _bn_buffers(model.aspp)
    model(torch.rand(2, 3, 64, 64)).mean().backward()
    for key, value in _bn_buffers(model.backbone).items():
        assert torch.equal(value, before_bn[key]), key
    assert any(not torch.equal(v, before_head[k]) for k, v in _bn_buffers(model.aspp).items())
    assert all(p.grad is None for p in model.backbone.parameters())

    unfreeze_backbone(model)
    assert model.backbone.training
    assert all(p.requires_grad for p in model.backbone.parameters())
    model(torch.rand(2, 3, 64, 64)).mean().backward()
    assert any(not torch.equal(v, before_bn[k]) for k, v in _bn_buffers(model.backbone).items())
    assert all(p.grad is not None for p in model.backbone.parameters())


def test_eval_then_train_keeps_frozen_backbone_in_eval():
    model = DeepLab(3, "xception")
    freeze_backbone(model)
    model.eval()
    model.train()
    assert not model.backbone.training
    assert model.aspp.training


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_drops_a_fraction_p_and_scales_the_rest(p):
    x = (torch.rand(4, 64, 32, 32) + 0.5).contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.manual_seed(0)
    out = Dropout(p).train()(x)
    kept = out != 0
    # 262144 Bernoulli draws: the dropped fraction is within 5 standard deviations of p.
    assert abs((1 - kept.float().mean().item()) - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5
    torch.testing.assert_close(out[kept], x[kept] / (1 - p))
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(x.grad, kept.float() / (1 - p))
    # The mask comes from torch's global generator: same seed, same mask.
    torch.manual_seed(0)
    assert torch.equal(Dropout(p).train()(x.detach()) != 0, kept)


def test_dropout_is_the_identity_in_eval_and_keeps_the_modules_type():
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(1.0).train()(x), torch.zeros_like(x))
    assert all(isinstance(m, torch.nn.Dropout) for m in DeepLab(3).cat_conv if "Dropout" in type(m).__name__)
