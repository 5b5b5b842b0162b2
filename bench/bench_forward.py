"""Model forward latency: batch 1, each backbone and output stride, in eval and inference mode.

Prints milliseconds, parameters, FLOPs and achieved GFLOP/s next to the float32 matmul
ceiling measured in the same run. ``python -m bench.bench_forward [--size 512] [--device cpu]``
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch

from bench.common import machine_description, matmul_gflops, time_call
from nets.deeplabv3_plus import BACKBONES, DOWNSAMPLE_FACTORS, DeepLab
from utils.summary import count_flops, count_parameters


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="square input size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    ceiling = matmul_gflops(device)
    print(f"machine: {machine_description(device)}; float32 matmul ceiling {ceiling:.0f} GFLOP/s")
    print(f"input 1x3x{args.size}x{args.size}, eval mode + torch.inference_mode, float32\n")
    print("| backbone | OS | params (M) | GFLOPs | ms | GFLOP/s | % of matmul ceiling |")
    print("|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for stride in sorted(DOWNSAMPLE_FACTORS, reverse=True):
            model = DeepLab(21, backbone, downsample_factor=stride).to(device).eval()
            flops = count_flops(model, (args.size, args.size))
            x = torch.rand(1, 3, args.size, args.size, device=device)

            def forward(model=model, x=x) -> torch.Tensor:
                with torch.inference_mode():
                    return model(x)

            seconds = time_call(forward, device, warmup=2, repeats=args.repeats)
            achieved = flops / seconds / 1e9
            print(f"| {backbone} | {stride} | {count_parameters(model) / 1e6:.2f} | {flops / 1e9:.1f} | "
                  f"{seconds * 1e3:.0f} | {achieved:.0f} | {100 * achieved / ceiling:.0f}% |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
