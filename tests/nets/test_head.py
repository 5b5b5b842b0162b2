"""The atrous separable head (``DeepLab(..., head="separable")``): shapes, structure, maths, FLOPs, freezing.

The standard head must stay exactly the original release's network; the separable one replaces each
3x3 convolution of ASPP and the decoder by depthwise 3x3 (dilated in ASPP) -> BN -> ReLU -> 1x1 -> BN -> ReLU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nets.deeplabv3_plus import DeepLab, Dropout, SeparableConvBNReLU, freeze_backbone, unfreeze_backbone
from utils.errors import UserError
from utils.inference.fuse import fuse_bn
from utils.summary import count_flops, main, parse_args

CONFIGS = [(b, s) for b in ("mobilenet", "xception") for s in (8, 16)]


def _reference_keys() -> dict[str, list]:
    """The original release's state-dict keys/shapes, wherever the tests keep that fixture."""
    tests_root = Path(__file__).resolve().parents[1]
    path = next(tests_root.rglob("reference_state_dict_keys.json"))
    return json.loads(path.read_text())


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=gen) * 0.2)


@pytest.mark.parametrize(("backbone", "stride"), CONFIGS)
def test_separable_head_gives_logits_at_input_size_and_gradients_everywhere(backbone, stride):
    torch.manual_seed(0)
    model = DeepLab(4, backbone, downsample_factor=stride, head="separable").train()
    assert model.head == "separable"
    logits = model(torch.rand(2, 3, 67, 93))
    assert logits.shape == (2, 4, 67, 93)
    logits.logsumexp(dim=1).mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    model.eval()
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 50, 41)).shape == (1, 4, 50, 41)


@pytest.mark.parametrize("bad", ["Separable", "depthwise", "", None])
def test_unknown_head_raises_value_error_listing_the_choices(bad):
    with pytest.raises(ValueError) as info:
        DeepLab(3, head=bad)
    message = str(info.value)
    assert "head" in message and "standard" in message and "separable" in message
    assert repr(bad) in message


@pytest.mark.parametrize(("stride", "rate"), [(16, 1), (8, 2)])
def test_separable_head_structure(stride, rate):
    model = DeepLab(3, "mobilenet", downsample_factor=stride, head="separable")
    in_channels = model.backbone.high_level_channels
    for branch, dilation in (("branch2", 6), ("branch3", 12), ("branch4", 18)):
        block = getattr(model.aspp, branch)
        assert isinstance(block, SeparableConvBNReLU)
        depthwise, pointwise = block.depthwise[0], block.pointwise[0]
        assert depthwise.groups == depthwise.in_channels == depthwise.out_channels == in_channels
        assert depthwise.kernel_size == (3, 3)
        assert depthwise.dilation == (dilation * rate, dilation * rate)
        assert depthwise.padding == (dilation * rate, dilation * rate)
        assert pointwise.kernel_size == (1, 1) and pointwise.groups == 1
        assert (pointwise.in_channels, pointwise.out_channels) == (in_channels, 256)
        assert [type(m) for m in block.depthwise] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
        assert [type(m) for m in block.pointwise] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]

    decoder = model.cat_conv
    assert [type(m) for m in decoder] == [SeparableConvBNReLU, Dropout, SeparableConvBNReLU, Dropout]
    assert (decoder[1].p, decoder[3].p) == (0.5, 0.1)
    assert decoder[0].depthwise[0].groups == 256 + 48 and decoder[0].depthwise[0].dilation == (1, 1)
    assert decoder[0].pointwise[0].out_channels == 256 and decoder[2].depthwise[0].groups == 256

    # No dense 3x3 convolution is left outside the backbone.
    for part in (model.aspp, model.cat_conv):
        for conv in (m for m in part.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)):
            assert conv.groups == conv.in_channels


def test_separable_block_computes_depthwise_then_pointwise():
    torch.manual_seed(0)
    block = SeparableConvBNReLU(5, 7, dilation=2)
    _randomise_batchnorm(block)
    block.eval()
    x = torch.randn(2, 5, 9, 11)

    def bn_relu(t: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
        shape = (1, -1, 1, 1)
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        return torch.relu((t - bn.running_mean.view(shape)) * scale.view(shape) + bn.bias.view(shape))

    with torch.no_grad():
        dw = block.depthwise[0].weight  # (5, 1, 3, 3)
        padded = F.pad(x, (2, 2, 2, 2))
        mid = torch.zeros_like(x)
        for c in range(5):  # each channel sees only its own 3x3 filter, taps 2 pixels apart
            for i in range(3):
                for j in range(3):
                    mid[:, c] += dw[c, 0, i, j] * padded[:, c, 2 * i:2 * i + 9, 2 * j:2 * j + 11]
        mid = bn_relu(mid, block.depthwise[1])
        pw = block.pointwise[0].weight[:, :, 0, 0]  # (7, 5)
        expected = bn_relu(torch.einsum("oc,nchw->nohw", pw, mid), block.pointwise[1])
        got = block(x)
    assert block.depthwise[0].bias is None and block.pointwise[0].bias is None
    assert torch.allclose(got, expected, atol=1e-5)


def test_separable_head_flops_are_at_most_035_of_standard_and_match_hand_count():
    size = 128
    standard = count_flops(DeepLab(21, "mobilenet", downsample_factor=16), (size, size))
    separable = count_flops(DeepLab(21, "mobilenet", downsample_factor=16, head="separable"), (size, size))
    assert separable <= 0.35 * standard

    def dense(c_in: int, c_out: int, pixels: int) -> int:
        return 2 * c_in * c_out * 9 * pixels

    def sep(c_in: int, c_out: int, pixels: int) -> int:
        return 2 * c_in * 9 * pixels + 2 * c_in * c_out * pixels

    high, low = (size // 16) ** 2, (size // 4) ** 2  # ASPP at stride 16, decoder at stride 4
    saved = (3 * (dense(320, 256, high) - sep(320, 256, high))
             + dense(304, 256, low) - sep(304, 256, low)
             + dense(256, 256, low) - sep(256, 256, low))
    assert standard - separable == saved


def test_summary_states_the_head_and_its_figures(capsys):
    assert main(parse_args(["--head", "separable", "--input-size", "64", "--num-classes", "3"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "DeepLabV3+ mobilenet, output stride 16, separable head, 3 classes, input 64x64"
    model = DeepLab(3, head="separable")
    params = sum(p.numel() for p in model.parameters())
    assert f"({params:,})" in lines[1]
    assert f"{count_flops(model, (64, 64)) / 1e9:.2f} G" in lines[2]
    main(parse_args(["--input-size", "64", "--num-classes", "3"]))
    assert "standard head" in capsys.readouterr().out.splitlines()[0]
    with pytest.raises(UserError, match="--head.*'standard', 'separable'"):
        parse_args(["--head", "dense"])


def test_standard_head_keeps_the_original_state_dict():
    reference = _reference_keys()
    for backbone in ("mobilenet", "xception"):
        state = DeepLab(21, backbone, head="standard").state_dict()
        got = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in state.items()]
        assert got == reference[backbone]


def test_separable_state_dict_keys_are_named_and_backbone_keys_unchanged():
    standard = DeepLab(21, "mobilenet").state_dict()
    separable = DeepLab(21, "mobilenet", head="separable").state_dict()
    backbone_keys = [k for k in standard if k.startswith("backbone.")]
    assert [k for k in separable if k.startswith("backbone.")] == backbone_keys
    for prefix in ("aspp.branch2", "aspp.branch3", "aspp.branch4", "cat_conv.0", "cat_conv.2"):
        for part in ("depthwise", "pointwise"):
            for suffix in ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
                assert f"{prefix}.{part}.{suffix}" in separable
    assert separable["aspp.branch2.depthwise.0.weight"].shape == (320, 1, 3, 3)
    assert separable["cat_conv.0.pointwise.0.weight"].shape == (256, 304, 1, 1)
    for key in ("aspp.branch1.0.weight", "aspp.branch5_conv.weight", "aspp.conv_cat.0.weight",
                "shortcut_conv.0.weight", "cls_conv.weight"):
        assert separable[key].shape == standard[key].shape
    with pytest.raises(RuntimeError, match="aspp.branch2"):
        DeepLab(21, "mobilenet", head="separable").load_state_dict(standard, strict=True)


def test_freeze_and_unfreeze_with_separable_head():
    torch.manual_seed(0)
    model = DeepLab(3, "mobilenet", head="separable")
    for frozen in (True, False):
        (freeze_backbone if frozen else unfreeze_backbone)(model)
        model.train()
        assert model.backbone.training is not frozen and model.aspp.training and model.cat_conv.training
        model.zero_grad(set_to_none=True)
        before = {k: v.clone() for k, v in model.state_dict().items() if k.endswith("running_mean")}
        model(torch.rand(2, 3, 64, 64)).mean().backward()
        after = model.state_dict()
        updated = {k for k, v in before.items() if not torch.equal(after[k], v)}
        head_stats = {k for k in before if not k.startswith("backbone.")}
        assert updated == (head_stats if frozen else set(before)), f"frozen={frozen}"
        for name, param in model.named_parameters():
            trains = not (frozen and name.startswith("backbone."))
            assert param.requires_grad is trains and (param.grad is not None) is trains, (frozen, name)


def test_batchnorm_folding_covers_the_separable_head_and_keeps_the_output():
    torch.manual_seed(0)
    model = DeepLab(3, "mobilenet", head="separable")
    _randomise_batchnorm(model)
    model.eval()
    x = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        expected = model(x)
        fuse_bn(model)
        got = model(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in (*model.aspp.modules(), *model.cat_conv.modules()))
    assert torch.allclose(got, expected, atol=1e-4 * expected.abs().max().item())
