"""DeepLabV3+ (Chen et al., ECCV 2018): backbone, ASPP, decoder and classifier head.

With ``head="standard"`` (the default) key names, shapes and the computed function follow
``../shared/spec/MODEL.md`` so the weight files of the original release load with
``strict=True``. ``head="separable"`` is the paper's variant: every 3x3 convolution of ASPP
and the decoder becomes an atrous depthwise-separable one (about a quarter of the FLOPs);
it has its own keys and is trained from scratch. Inputs are RGB in [0, 1] (no mean/std),
of any size; logits come back at the input size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nets.registry import BackboneEntry, get_backbone

DOWNSAMPLE_FACTORS = (8, 16)
HEADS = ("standard", "separable")


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1, groups: int = 1,
                  bias: bool = True) -> nn.Sequential:
    """Convolution (same padding) -> BatchNorm -> ReLU, keys ``0.*`` and ``1.*`` as in the original."""
    padding = dilation * (kernel - 1) // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, 1, padding, dilation=dilation, groups=groups, bias=bias),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SeparableConvBNReLU(nn.Module):
    """Atrous separable 3x3 convolution: depthwise 3x3 -> BN -> ReLU -> pointwise 1x1 -> BN -> ReLU.

    The convolutions carry no bias because the BatchNorm right after each one has its own.
    State-dict keys are ``depthwise.{0,1}.*`` and ``pointwise.{0,1}.*``.

    Args:
        in_channels: input channels (the depthwise convolution has one group per channel).
        out_channels: output channels of the pointwise convolution.
        dilation: dilation of the depthwise 3x3.
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__()
        self.depthwise = _conv_bn_relu(in_channels, in_channels, 3, dilation, groups=in_channels, bias=False)
        self.pointwise = _conv_bn_relu(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same module, no state) that draws its mask with ``torch.rand`` on the CPU.

    PyTorch's CPU dropout fills its mask with a scalar ``bernoulli_``: on the decoder's
    256-channel maps that alone took about 6% of a mobilenet training step. Uniform numbers
    compared with ``p`` give the same distribution, and with the mask applied by ``torch.where``
    forward and backward cost about a third less (55 against 80 ms on an 8x256x48x64 map with
    AVX-512). The draws come from torch's global generator, as before, so seeding and resuming
    work unchanged. Other devices use the fused native kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return F.dropout(x, self.p, self.training, self.inplace)
        if self.p == 1:
            return torch.zeros_like(x)
        keep = torch.rand_like(x, dtype=torch.float32) >= self.p  # in x's memory layout
        return torch.where(keep, x * (1 / (1 - self.p)), 0)


def _conv3x3(in_channels: int, out_channels: int, dilation: int, separable: bool) -> nn.Module:
    """The 3x3 convolution block of ASPP: plain (original keys) or atrous separable."""
    if separable:
        return SeparableConvBNReLU(in_channels, out_channels, dilation)
    return _conv_bn_relu(in_channels, out_channels, 3, dilation)


def _decoder(in_channels: int, separable: bool) -> nn.Sequential:
    """The decoder's two 3x3 convolutions to 256 channels, each followed by Dropout (0.5, then 0.1).

    The standard layout is flat (``cat_conv.0/1/4/5``) because the released weights use those keys.
    """
    if separable:
        return nn.Sequential(
            SeparableConvBNReLU(in_channels, 256),
            Dropout(0.5),
            SeparableConvBNReLU(256, 256),
            Dropout(0.1),
        )
    return nn.Sequential(
        nn.Conv2d(in_channels, 256, 3, 1, 1),
        nn.BatchNorm2d(256),
        nn.ReLU(inplace=True),
        Dropout(0.5),
        nn.Conv2d(256, 256, 3, 1, 1),
        nn.BatchNorm2d(256),
        nn.ReLU(inplace=True),
        Dropout(0.1),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3 and image pooling branches.

    Args:
        in_channels: channels of the high-level feature.
        out_channels: channels of each branch and of the output.
        rate: dilation multiplier, ``16 // output_stride``.
        separable: use atrous separable convolutions in the three dilated branches.
    """

    def __init__(self, in_channels: int, out_channels: int = 256, rate: int = 1, separable: bool = False) -> None:
        super().__init__()
        self.branch1 = _conv_bn_relu(in_channels, out_channels, 1)
        self.branch2 = _conv3x3(in_channels, out_channels, 6 * rate, separable)
        self.branch3 = _conv3x3(in_channels, out_channels, 12 * rate, separable)
        self.branch4 = _conv3x3(in_channels, out_channels, 18 * rate, separable)
        self.branch5_conv = nn.Conv2d(in_channels, out_channels, 1, bias=True)
        self.branch5_bn = nn.BatchNorm2d(out_channels)
        self.conv_cat = _conv_bn_relu(out_channels * 5, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3), keepdim=True)
        pooled = F.relu(self.branch5_bn(self.branch5_conv(pooled)), inplace=True)
        pooled = F.interpolate(pooled, size=x.shape[2:], mode="bilinear", align_corners=True)
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x), pooled]
        return self.conv_cat(torch.cat(branches, dim=1))


class DeepLab(nn.Module):
    """DeepLabV3+ semantic segmentation network.

    Args:
        num_classes: output channels of the classifier (at least 1; one for a binary model).
        backbone: a registered backbone (:mod:`nets.registry`) or its name.
        downsample_factor: output stride of the backbone, 8 or 16.
        head: ``"standard"`` (plain 3x3 convolutions, the original release's keys) or
            ``"separable"`` (atrous separable 3x3 convolutions in ASPP and the decoder).
        in_channels: input bands (3 for RGB).

    Build models with :func:`nets.spec.build_model`, which also initialises them and loads the
    ImageNet backbone; this constructor leaves every layer at PyTorch's default initialisation.

    Raises:
        ValueError: for an unknown backbone or head, an unsupported output stride or a
            class count below 1; the message lists the allowed values.
    """

    def __init__(self, num_classes: int, backbone: str | BackboneEntry = "mobilenet",
                 downsample_factor: int = 16, head: str = "standard", in_channels: int = 3) -> None:
        super().__init__()
        entry = backbone if isinstance(backbone, BackboneEntry) else get_backbone(backbone)
        if downsample_factor not in DOWNSAMPLE_FACTORS:
            raise ValueError(f"downsample_factor (output stride) must be one of 8, 16; got {downsample_factor!r}")
        if head not in HEADS:
            raise ValueError(f"head must be one of {', '.join(HEADS)}; got {head!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1; got {num_classes!r}")
        self.num_classes = num_classes
        self.backbone_name = entry.name
        self.downsample_factor = downsample_factor
        self.head = head
        self.backbone_frozen = False
        self.backbone = entry.factory(downsample_factor, in_channels)
        separable = head == "separable"
        self.aspp = ASPP(entry.high_level_channels, 256, rate=16 // downsample_factor, separable=separable)
        self.shortcut_conv = _conv_bn_relu(entry.low_level_channels, 48, 1)
        self.cat_conv = _decoder(256 + 48, separable)
        self.cls_conv = nn.Conv2d(256, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        low, high = self.backbone(x)
        high = self.aspp(high)
        low = self.shortcut_conv(low)
        high = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=True)
        out = self.cls_conv(self.cat_conv(torch.cat((high, low), dim=1)))
        return F.interpolate(out, size=size, mode="bilinear", align_corners=True)

    def train(self, mode: bool = True) -> DeepLab:
        """Set train/eval mode; a frozen backbone keeps its BatchNorm statistics fixed."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self


def freeze_backbone(model: nn.Module, fix_bn: bool = True) -> None:
    """Make the backbone untrainable; with ``fix_bn`` also keep its BatchNorm running statistics
    fixed (eval mode), else they keep adapting in train mode, as in the original's frozen phase.

    Accepts a ``DeepLab`` or a wrapper holding one in ``.module`` (DDP).
    """
    _set_backbone_frozen(model, True, fix_bn)


def unfreeze_backbone(model: nn.Module) -> None:
    """Undo :func:`freeze_backbone`: the backbone trains and updates its statistics again."""
    _set_backbone_frozen(model, False, False)


def _set_backbone_frozen(model: nn.Module, frozen: bool, fix_bn: bool) -> None:
    net = getattr(model, "module", model)
    for param in net.backbone.parameters():
        param.requires_grad_(not frozen)
    net.backbone_frozen = frozen and fix_bn  # what train() reads: backbone BatchNorm held in eval
    net.train(net.training)
