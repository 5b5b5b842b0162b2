"""MobileNetV2 backbone for DeepLabV3+, with the output stride set when it is built.

The module and key layout (``features.0`` .. ``features.17``) follows the original
release so that its weight files load unchanged. Instead of patching strides and
dilations after construction, each block is created with the stride and dilation
that the requested output stride needs (see ``../shared/spec/MODEL.md``).
"""

from __future__ import annotations

import torch
from torch import nn

# (expansion t, channels c, repeats n, first stride s) of the ImageNet network.
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# Index of the first block of each dilated stage, keyed by output stride: from that
# block on the stride-2 conv becomes stride 1 and the following 3x3 convs dilate.
_DILATED_STAGES = {16: ((14, 2),), 8: ((7, 2), (14, 4))}


def _conv_bn_relu6(inp: int, oup: int, kernel: int, stride: int = 1, dilation: int = 1, groups: int = 1) -> list:
    padding = dilation * (kernel - 1) // 2
    return [
        nn.Conv2d(inp, oup, kernel, stride, padding, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU6(inplace=True),
    ]


class InvertedResidual(nn.Module):
    """MobileNetV2 block; ``use_residual`` is decided by the ImageNet stride, as in the release."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, dilation: int = 1, *,
                 use_residual: bool) -> None:
        super().__init__()
        hidden = inp * expand_ratio
        self.use_residual = use_residual
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += _conv_bn_relu6(inp, hidden, 1)
        layers += _conv_bn_relu6(hidden, hidden, 3, stride, dilation, groups=hidden)
        layers += [nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 feature extractor returning ``(low_level, high_level)`` features.

    Args:
        downsample_factor: output stride of the high-level features, 8 or 16.
        in_channels: input bands (3 for RGB, the released weights' layout).

    The low-level feature is the output of ``features[0..3]`` (24 channels, stride 4),
    the high-level one that of ``features[4..17]`` (320 channels).
    """

    low_level_channels = 24
    high_level_channels = 320

    def __init__(self, downsample_factor: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        if downsample_factor not in _DILATED_STAGES:
            raise ValueError(f"downsample_factor must be one of 8, 16; got {downsample_factor!r}")
        dilation_from = dict(_DILATED_STAGES[downsample_factor])
        blocks: list[nn.Module] = [nn.Sequential(*_conv_bn_relu6(in_channels, 32, 3, stride=2))]
        inp, dilation = 32, 1
        for t, c, n, s in _SETTINGS:
            for i in range(n):
                index = len(blocks)
                stride = s if i == 0 else 1
                residual = stride == 1 and inp == c
                if index in dilation_from:
                    # The stage that would have downsampled keeps its resolution instead: its
                    # stride-2 conv runs at half the stage's new dilation, the rest at the full one.
                    dilation = dilation_from[index]
                    stride, block_dilation = 1, dilation // 2
                else:
                    block_dilation = dilation
                blocks.append(InvertedResidual(inp, c, stride, t, block_dilation, use_residual=residual))
                inp = c
        self.features = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = self.features[:4](x)
        return low, self.features[4:](low)
