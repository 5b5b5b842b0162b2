"""Fold BatchNorm into the preceding convolution for inference.

In eval mode a BatchNorm is an affine map per channel, so it can be merged into the
weights and bias of the conv that feeds it; the BN becomes ``nn.Identity`` and one full
pass over every activation disappears. DeepLabV3+ has its conv->BN pairs in three shapes:
consecutive entries of an ``nn.Sequential`` (MobileNetV2, ASPP branches, decoder), named
attribute pairs that ``forward`` chains directly (Xception ``SeparableConv2d`` depthwise->bn1
and pointwise->bn2, ``Block`` skip->skipbn, the Xception stem, the ASPP pooling branch).
Only pairs where the conv output feeds nothing but the BN are listed, which is what makes
the rewrite exact. Backbones list their own pairs in their registry entry (:mod:`nets.registry`).
"""

from __future__ import annotations

import itertools

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from nets.deeplabv3_plus import ASPP
from nets.registry import all_fuse_pairs

# The head's module class -> (conv attribute, bn attribute) pairs that forward() applies back to back.
_HEAD_PAIRS: dict[type, tuple[tuple[str, str], ...]] = {ASPP: (("branch5_conv", "branch5_bn"),)}


def _fusable(conv: nn.Module, bn: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
            and conv.out_channels == bn.num_features)


def fuse_bn(model: nn.Module) -> int:
    """Fold every known conv->BatchNorm pair of ``model`` in place; return how many were folded.

    The model must be in eval mode (the running statistics are used); call it on a copy
    when the original is still trained. Outputs stay equal up to float rounding.
    """
    if model.training:
        raise ValueError("fuse_bn needs a model in eval mode (model.eval()); BatchNorm folding uses running stats")
    fused = 0
    named_pairs = {**all_fuse_pairs(), **_HEAD_PAIRS}
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            children = list(module._modules.items())
            for (conv_name, conv), (bn_name, bn) in itertools.pairwise(children):
                if _fusable(conv, bn):
                    module._modules[conv_name] = fuse_conv_bn_eval(conv, bn)
                    module._modules[bn_name] = nn.Identity()
                    fused += 1
        for conv_name, bn_name in named_pairs.get(type(module), ()):
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if conv is not None and bn is not None and _fusable(conv, bn):
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
                fused += 1
    return fused
