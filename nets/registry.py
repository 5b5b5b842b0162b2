"""The backbone registry: everything the toolkit needs to know about a backbone, in one entry.

Adding a backbone is one new module (a ``nn.Module`` built as ``factory(output_stride, in_channels)``
whose ``forward`` returns ``(low_level, high_level)`` features) plus one :func:`register_backbone`
call. The model builder, the ImageNet loader, the recognition of bare weight files, BatchNorm
folding for inference and the learning-rate limits all read the entry; nothing else names a
backbone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from torch import nn

from nets.mobilenetv2 import MobileNetV2
from nets.xception import Block, SeparableConv2d, Xception

# Conv -> BatchNorm attribute pairs that a module's forward() applies back to back (see utils.inference.fuse).
FusePairs = Mapping[type, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class BackboneEntry:
    """One backbone.

    Args:
        name: the ``--backbone`` value.
        factory: ``factory(output_stride, in_channels)`` -> the feature extractor.
        low_level_channels / high_level_channels: channels of the two features it returns.
        pretrained_file: file name of its ImageNet weights in ``model_data/`` (None: none exist).
        pretrained_url: where that file is downloaded from when absent.
        marker_key: a state-dict key that only a DeepLab with this backbone has, so that a bare
            weight file (the original release's) tells which backbone it holds.
        fuse_pairs: conv -> BatchNorm attribute pairs of its module classes that ``forward`` chains
            directly (pairs inside ``nn.Sequential`` are found without being listed).
        lr_limits: per optimizer, the (lowest, highest) initial learning rate after batch scaling,
            where this backbone narrows the general range.
    """

    name: str
    factory: Callable[[int, int], nn.Module]
    low_level_channels: int
    high_level_channels: int
    marker_key: str
    pretrained_file: str | None = None
    pretrained_url: str | None = None
    fuse_pairs: FusePairs = field(default_factory=dict)
    lr_limits: Mapping[str, tuple[float, float]] = field(default_factory=dict)


_REGISTRY: dict[str, BackboneEntry] = {}


def register_backbone(entry: BackboneEntry, replace: bool = False) -> BackboneEntry:
    """Add ``entry``; registering a taken name again is a ValueError unless ``replace``."""
    if entry.name in _REGISTRY and not replace:
        raise ValueError(f"backbone {entry.name!r} is already registered (pass replace=True to override it)")
    _REGISTRY[entry.name] = entry
    return entry


def unregister_backbone(name: str) -> None:
    """Remove a registered backbone (tests that register one clean up with this)."""
    _REGISTRY.pop(name, None)


def backbone_names() -> tuple[str, ...]:
    """The registered backbone names, in registration order."""
    return tuple(_REGISTRY)


def get_backbone(name: str) -> BackboneEntry:
    """The entry of ``name``; a ValueError that lists the registered names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"backbone must be one of {', '.join(_REGISTRY)}; got {name!r}") from None


def all_fuse_pairs() -> dict[type, tuple[tuple[str, str], ...]]:
    """The conv -> BatchNorm pairs of every registered backbone."""
    pairs: dict[type, tuple[tuple[str, str], ...]] = {}
    for entry in _REGISTRY.values():
        pairs.update(entry.fuse_pairs)
    return pairs


RELEASE_URL = "https://github.com/bubbliiiing/deeplabv3-plus-pytorch/releases/download/v1.0/"

register_backbone(BackboneEntry(
    name="mobilenet",
    factory=lambda stride, bands: MobileNetV2(stride, bands),
    low_level_channels=MobileNetV2.low_level_channels,
    high_level_channels=MobileNetV2.high_level_channels,
    marker_key="backbone.features.0.0.weight",
    pretrained_file="mobilenet_v2.pth.tar",
    pretrained_url=RELEASE_URL + "mobilenet_v2.pth.tar",
))
register_backbone(BackboneEntry(
    name="xception",
    factory=lambda stride, bands: Xception(stride, bands),
    low_level_channels=Xception.low_level_channels,
    high_level_channels=Xception.high_level_channels,
    marker_key="backbone.conv1.weight",
    pretrained_file="xception_pytorch_imagenet.pth",
    pretrained_url=RELEASE_URL + "xception_pytorch_imagenet.pth",
    fuse_pairs={SeparableConv2d: (("depthwise", "bn1"), ("pointwise", "bn2")),
                Block: (("skip", "skipbn"),),
                Xception: (("conv1", "bn1"), ("conv2", "bn2"))},
    # The original narrows Adam to exactly 1e-4 for Xception; AdamW follows Adam.
    lr_limits={"adam": (1e-4, 1e-4), "adamw": (1e-4, 1e-4)},
))
