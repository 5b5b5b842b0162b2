"""Model summary: parameter count and FLOPs of any DeepLabV3+ configuration.

FLOPs come from ``torch.utils.flop_counter`` and count a multiply-add as two
operations. Run ``python -m utils.summary --backbone xception --downsample-factor 8 --head separable``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nets.deeplabv3_plus import DOWNSAMPLE_FACTORS, HEADS
from nets.registry import backbone_names
from nets.spec import ModelSpec, build_model
from utils.errors import ArgumentParser, parse_input_size, run_cli


def count_parameters(model: nn.Module) -> int:
    """Number of parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, input_size: Sequence[int], batch_size: int = 1) -> int:
    """Forward FLOPs of ``model`` for an input of ``(batch, bands, H, W)`` (multiply-add = 2)."""
    height, width = (input_size[0], input_size[-1])
    param = next(model.parameters())
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    x = torch.zeros(batch_size, first_conv.in_channels, height, width, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(prog="python -m utils.summary",
                            description="Parameters and FLOPs of a DeepLabV3+ configuration.")
    parser.add_argument("--backbone", choices=backbone_names(), default="mobilenet")
    parser.add_argument("--downsample-factor", type=int, choices=DOWNSAMPLE_FACTORS, default=16)
    parser.add_argument("--head", choices=HEADS, default="standard",
                        help="3x3 convolutions of ASPP and the decoder: plain or atrous separable")
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--input-size", type=int, nargs="+", default=[512], metavar=("H", "W"))
    args = parser.parse_args(argv)
    args.input_size = parse_input_size(args.input_size)
    if args.num_classes < 2:
        parser.error(f"--num-classes {args.num_classes}: need at least 2 (background and one class)")
    return args


def main(args: argparse.Namespace) -> int:
    spec = ModelSpec(backbone=args.backbone, num_classes=args.num_classes, downsample_factor=args.downsample_factor,
                     head=args.head)
    model = build_model(spec, init="pytorch")
    size = tuple(args.input_size)
    params = count_parameters(model)
    flops = count_flops(model, size)
    print(f"DeepLabV3+ {args.backbone}, output stride {args.downsample_factor}, {args.head} head, "
          f"{args.num_classes} classes, input {size[0]}x{size[1]}")
    print(f"parameters: {params / 1e6:.2f} M ({params:,})")
    print(f"FLOPs:      {flops / 1e9:.2f} G per image (multiply-add counted as 2)")
    return 0


if __name__ == "__main__":
    run_cli(lambda argv: main(parse_args(argv)))
