"""Aligned Xception backbone for DeepLabV3+, key-compatible with the original release.

Strides and dilations are fixed at construction from the output stride. The
low-level feature (output of ``block2.sepconv2``) is returned from ``forward``
rather than kept on a module, so the model stays re-entrant and traceable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# The released weights were trained with this BatchNorm momentum in the backbone.
BN_MOMENTUM = 0.0003

# Output stride -> (stride of block2, block3, block20), dilation of the exit flow.
_STRIDES = {16: ((2, 2, 1), 1), 8: ((2, 1, 1), 2)}


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 + pointwise 1x1, each followed by BatchNorm.

    With ``activate_first`` the ReLU comes before the depthwise conv (entry and middle
    flow); otherwise ReLUs follow each BatchNorm (exit flow convs).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 activate_first: bool = True) -> None:
        super().__init__()
        self.activate_first = activate_first
        self.depthwise = nn.Conv2d(in_channels, in_channels, 3, stride, dilation, dilation,
                                   groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels, momentum=BN_MOMENTUM)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate_first:
            return self.bn2(self.pointwise(self.bn1(self.depthwise(F.relu(x)))))
        x = F.relu(self.bn1(self.depthwise(x)), inplace=True)
        return F.relu(self.bn2(self.pointwise(x)), inplace=True)


class Block(nn.Module):
    """Three separable convs (the third carries the stride) plus a shortcut.

    A block without projection adds the ReLU of its input, not the raw input: the
    original code applied that ReLU in place on the tensor it also used as the
    shortcut, and the released weights were trained with that behaviour.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1,
                 grow_first: bool = True) -> None:
        super().__init__()
        mid = out_channels if grow_first else in_channels
        if in_channels != out_channels or stride != 1:
            self.skip = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
            self.skipbn = nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM)
        else:
            self.skip = None
        self.sepconv1 = SeparableConv2d(in_channels, mid, 1, dilation)
        self.sepconv2 = SeparableConv2d(mid, out_channels, 1, dilation)
        self.sepconv3 = SeparableConv2d(out_channels, out_channels, stride, dilation)

    def forward_with_tap(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the block output and the output of ``sepconv2`` (the low-level tap)."""
        shortcut = self.skipbn(self.skip(x)) if self.skip is not None else F.relu(x)
        tap = self.sepconv2(self.sepconv1(x))
        return self.sepconv3(tap) + shortcut, tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_tap(x)[0]


class Xception(nn.Module):
    """Aligned Xception returning ``(low_level, high_level)`` features.

    Args:
        downsample_factor: output stride of the high-level features, 8 or 16.
        in_channels: input bands (3 for RGB, the released weights' layout).
    """

    low_level_channels = 256
    high_level_channels = 2048

    def __init__(self, downsample_factor: int = 16, in_channels: int = 3) -> None:
        super().__init__()
        if downsample_factor not in _STRIDES:
            raise ValueError(f"downsample_factor must be one of 8, 16; got {downsample_factor!r}")
        (s1, s2, s3), rate = _STRIDES[downsample_factor]
        self.conv1 = nn.Conv2d(in_channels, 32, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32, momentum=BN_MOMENTUM)
        self.conv2 = nn.Conv2d(32, 64, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOMENTUM)
        self.block1 = Block(64, 128, 2)
        self.block2 = Block(128, 256, s1)
        self.block3 = Block(256, 728, s2)
        for i in range(4, 20):
            setattr(self, f"block{i}", Block(728, 728, 1, rate))
        self.block20 = Block(728, 1024, s3, rate, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, 1, rate, activate_first=False)
        self.conv4 = SeparableConv2d(1536, 1536, 1, rate, activate_first=False)
        self.conv5 = SeparableConv2d(1536, 2048, 1, rate, activate_first=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = F.relu(self.bn2(self.conv2(x)), inplace=True)
        x = self.block1(x)
        x, low = self.block2.forward_with_tap(x)
        for i in range(3, 21):
            x = getattr(self, f"block{i}")(x)
        return low, self.conv5(self.conv4(self.conv3(x)))
