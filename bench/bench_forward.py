"""Model forward latency: batch 1, each backbone, output stride and head, in eval and inference mode.

Prints milliseconds, parameters, FLOPs and achieved GFLOP/s next to the float32 matmul
ceiling measured in the same run, and each head's FLOPs and time relative to the standard
head of the same configuration: for the plain model (NCHW, BatchNorm as layers) and for the
fp32 forward that predict.py and get_miou.py run (``TorchBackend``: BatchNorm folded into the
convolutions, channels-last). All models of one configuration are timed round-robin, so load
from other processes hits them alike.
``python -m bench.bench_forward [--size 512] [--device cpu] [--heads standard separable] [--threads 2]``
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import torch

from bench.common import interleaved, machine_description, matmul_gflops, synchronize
from nets.deeplabv3_plus import DOWNSAMPLE_FACTORS, HEADS
from nets.registry import backbone_names
from nets.spec import ModelSpec, build_model
from utils.inference.backends import TorchBackend
from utils.summary import count_flops, count_parameters


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="square input size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per model (the median is printed)")
    parser.add_argument("--backbones", nargs="+", default=list(backbone_names()), choices=backbone_names())
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return parser.parse_args(argv)


def forward_call(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> Callable[[], object]:
    """One batch-1 forward in inference mode, finished on the device before it returns."""
    def run() -> object:
        with torch.inference_mode():
            out = model(x)
        synchronize(device)
        return out
    return run


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ceiling = matmul_gflops(device)
    print(f"machine: {machine_description(device)}; float32 matmul ceiling {ceiling:.0f} GFLOP/s")
    print(f"input 1x3x{args.size}x{args.size}, eval mode + torch.inference_mode, float32, "
          f"median of {args.repeats} round-robin runs after 2 warm-up runs\n")
    print("| backbone | OS | head | params (M) | GFLOPs | ms | GFLOP/s | % of matmul ceiling "
          "| FLOPs vs standard | time vs standard | predictor fp32 ms | predictor time vs standard |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    x = torch.rand(1, 3, args.size, args.size, device=device)
    for backbone in args.backbones:
        for stride in sorted(DOWNSAMPLE_FACTORS, reverse=True):
            models = {head: build_model(ModelSpec(backbone=backbone, num_classes=21, downsample_factor=stride,
                                                  head=head), init="pytorch").to(device).eval()
                      for head in args.heads}
            flops = {head: count_flops(model, (args.size, args.size)) for head, model in models.items()}
            calls = {head: forward_call(model, x, device) for head, model in models.items()}
            calls.update({f"{head} predictor": forward_call(TorchBackend(model, device, precision="fp32"), x, device)
                          for head, model in models.items()})
            times = interleaved(calls, rounds=args.repeats, warmup=2)
            for head, model in models.items():
                seconds, fused = times[head][1], times[f"{head} predictor"][1]
                achieved = flops[head] / seconds / 1e9
                if "standard" in models:
                    ratios = (f"{flops[head] / flops['standard']:.2f}x | {seconds / times['standard'][1]:.2f}x | "
                              f"{fused * 1e3:.0f} | {fused / times['standard predictor'][1]:.2f}x")
                else:
                    ratios = f"- | - | {fused * 1e3:.0f} | -"
                print(f"| {backbone} | {stride} | {head} | {count_parameters(model) / 1e6:.2f} | "
                      f"{flops[head] / 1e9:.1f} | {seconds * 1e3:.0f} | {achieved:.0f} | "
                      f"{100 * achieved / ceiling:.0f}% | {ratios} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
