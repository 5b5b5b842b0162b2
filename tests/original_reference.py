"""A faithful re-creation of the original release's network code, used only as a test oracle.

It keeps the original's mechanics on purpose: strides and dilations patched after
construction (``_nostride_dilate``), the low-level feature stored on a module during
``forward``, and in-place ReLUs whose side effect turns the Xception shortcut into the
ReLU of the block input. Our model must compute the same function with the same keys.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

BN_MOM = 0.0003


def _conv_bn(inp, oup, stride):
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class _InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        if expand_ratio == 1:
            self.conv = nn.Sequential(
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True), nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))
        else:
            self.conv = nn.Sequential(
                nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True), nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup))

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class _MobileNetV2Full(nn.Module):
    def __init__(self):
        super().__init__()
        settings = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                    [6, 320, 1, 1]]
        features = [_conv_bn(3, 32, 2)]
        inp = 32
        for t, c, n, s in settings:
            for i in range(n):
                features.append(_InvertedResidual(inp, c, s if i == 0 else 1, t))
                inp = c
        features.append(nn.Sequential(nn.Conv2d(inp, 1280, 1, 1, 0, bias=False), nn.BatchNorm2d(1280),
                                      nn.ReLU6(inplace=True)))
        self.features = nn.Sequential(*features)


class OriginalMobileNetV2(nn.Module):
    def __init__(self, downsample_factor=8):
        super().__init__()
        model = _MobileNetV2Full()
        self.features = model.features[:-1]
        self.total_idx = len(self.features)
        self.down_idx = [2, 4, 7, 14]
        if downsample_factor == 8:
            for i in range(self.down_idx[-2], self.down_idx[-1]):
                self.features[i].apply(partial(self._nostride_dilate, dilate=2))
            for i in range(self.down_idx[-1], self.total_idx):
                self.features[i].apply(partial(self._nostride_dilate, dilate=4))
        elif downsample_factor == 16:
            for i in range(self.down_idx[-1], self.total_idx):
                self.features[i].apply(partial(self._nostride_dilate, dilate=2))

    @staticmethod
    def _nostride_dilate(m, dilate):
        if m.__class__.__name__.find("Conv") != -1:
            if m.stride == (2, 2):
                m.stride = (1, 1)
                if m.kernel_size == (3, 3):
                    m.dilation = (dilate // 2, dilate // 2)
                    m.padding = (dilate // 2, dilate // 2)
            elif m.kernel_size == (3, 3):
                m.dilation = (dilate, dilate)
                m.padding = (dilate, dilate)

    def forward(self, x):
        low = self.features[:4](x)
        return low, self.features[4:](low)


class _SeparableConv2d(nn.Module):
    def __init__(self, cin, cout, kernel_size=1, stride=1, padding=0, dilation=1, activate_first=True, inplace=True):
        super().__init__()
        self.relu0 = nn.ReLU(inplace=inplace)
        self.depthwise = nn.Conv2d(cin, cin, kernel_size, stride, padding, dilation, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin, momentum=BN_MOM)
        self.relu1 = nn.ReLU(inplace=True)
        self.pointwise = nn.Conv2d(cin, cout, 1, 1, 0, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, momentum=BN_MOM)
        self.relu2 = nn.ReLU(inplace=True)
        self.activate_first = activate_first

    def forward(self, x):
        if self.activate_first:
            x = self.relu0(x)
        x = self.bn1(self.depthwise(x))
        if not self.activate_first:
            x = self.relu1(x)
        x = self.bn2(self.pointwise(x))
        if not self.activate_first:
            x = self.relu2(x)
        return x


class _Block(nn.Module):
    def __init__(self, cin, cout, strides=1, atrous=1, grow_first=True, activate_first=True, inplace=True):
        super().__init__()
        atrous = [atrous] * 3
        self.head_relu = True
        if cout != cin or strides != 1:
            self.skip = nn.Conv2d(cin, cout, 1, stride=strides, bias=False)
            self.skipbn = nn.BatchNorm2d(cout, momentum=BN_MOM)
            self.head_relu = False
        else:
            self.skip = None
        self.hook_layer = None
        filters = cout if grow_first else cin
        self.sepconv1 = _SeparableConv2d(cin, filters, 3, 1, atrous[0], atrous[0], activate_first, self.head_relu)
        self.sepconv2 = _SeparableConv2d(filters, cout, 3, 1, atrous[1], atrous[1], activate_first)
        self.sepconv3 = _SeparableConv2d(cout, cout, 3, strides, atrous[2], atrous[2], activate_first, inplace)

    def forward(self, inp):
        skip = self.skipbn(self.skip(inp)) if self.skip is not None else inp
        x = self.sepconv1(inp)
        x = self.sepconv2(x)
        self.hook_layer = x
        x = self.sepconv3(x)
        x += skip
        return x


class OriginalXception(nn.Module):
    def __init__(self, downsample_factor):
        super().__init__()
        stride_list = [2, 2, 1] if downsample_factor == 16 else [2, 1, 1]
        rate = 16 // downsample_factor
        self.conv1 = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(32, momentum=BN_MOM)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(32, 64, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(64, momentum=BN_MOM)
        self.block1 = _Block(64, 128, 2)
        self.block2 = _Block(128, 256, stride_list[0], inplace=False)
        self.block3 = _Block(256, 728, stride_list[1])
        for i in range(4, 20):
            setattr(self, f"block{i}", _Block(728, 728, 1, atrous=rate))
        self.block20 = _Block(728, 1024, stride_list[2], atrous=rate, grow_first=False)
        self.conv3 = _SeparableConv2d(1024, 1536, 3, 1, 1 * rate, dilation=rate, activate_first=False)
        self.conv4 = _SeparableConv2d(1536, 1536, 3, 1, 1 * rate, dilation=rate, activate_first=False)
        self.conv5 = _SeparableConv2d(1536, 2048, 3, 1, 1 * rate, dilation=rate, activate_first=False)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.block1(x)
        x = self.block2(x)
        low = self.block2.hook_layer
        for i in range(3, 21):
            x = getattr(self, f"block{i}")(x)
        return low, self.conv5(self.conv4(self.conv3(x)))


class _ASPP(nn.Module):
    def __init__(self, dim_in, dim_out, rate=1, bn_mom=0.1):
        super().__init__()

        def branch(k, d):
            return nn.Sequential(nn.Conv2d(dim_in, dim_out, k, 1, padding=0 if k == 1 else d, dilation=d, bias=True),
                                 nn.BatchNorm2d(dim_out, momentum=bn_mom), nn.ReLU(inplace=True))

        self.branch1 = branch(1, rate)
        self.branch2 = branch(3, 6 * rate)
        self.branch3 = branch(3, 12 * rate)
        self.branch4 = branch(3, 18 * rate)
        self.branch5_conv = nn.Conv2d(dim_in, dim_out, 1, 1, 0, bias=True)
        self.branch5_bn = nn.BatchNorm2d(dim_out, momentum=bn_mom)
        self.branch5_relu = nn.ReLU(inplace=True)
        self.conv_cat = nn.Sequential(nn.Conv2d(dim_out * 5, dim_out, 1, 1, padding=0, bias=True),
                                      nn.BatchNorm2d(dim_out, momentum=bn_mom), nn.ReLU(inplace=True))

    def forward(self, x):
        _, _, row, col = x.size()
        g = torch.mean(torch.mean(x, 2, True), 3, True)
        g = self.branch5_relu(self.branch5_bn(self.branch5_conv(g)))
        g = F.interpolate(g, (row, col), None, "bilinear", True)
        cat = torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x), g], dim=1)
        return self.conv_cat(cat)


class OriginalDeepLab(nn.Module):
    def __init__(self, num_classes, backbone="mobilenet", downsample_factor=16):
        super().__init__()
        if backbone == "xception":
            self.backbone = OriginalXception(downsample_factor)
            in_channels, low_channels = 2048, 256
        else:
            self.backbone = OriginalMobileNetV2(downsample_factor)
            in_channels, low_channels = 320, 24
        self.aspp = _ASPP(in_channels, 256, rate=16 // downsample_factor)
        self.shortcut_conv = nn.Sequential(nn.Conv2d(low_channels, 48, 1), nn.BatchNorm2d(48), nn.ReLU(inplace=True))
        self.cat_conv = nn.Sequential(
            nn.Conv2d(48 + 256, 256, 3, stride=1, padding=1), nn.BatchNorm2d(256), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Conv2d(256, 256, 3, stride=1, padding=1), nn.BatchNorm2d(256),
            nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.cls_conv = nn.Conv2d(256, num_classes, 1, stride=1)

    def forward(self, x):
        h, w = x.size(2), x.size(3)
        low, x = self.backbone(x)
        x = self.aspp(x)
        low = self.shortcut_conv(low)
        x = F.interpolate(x, size=(low.size(2), low.size(3)), mode="bilinear", align_corners=True)
        x = self.cls_conv(self.cat_conv(torch.cat((x, low), dim=1)))
        return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True)
