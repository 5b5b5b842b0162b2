"""Benchmark: training throughput (images/s) and peak memory of DeepLabV3+ on synthetic batches.

One training step is what ``utils/training/epoch.py`` does per iteration: forward (autocast when
``--amp``), cross-entropy on float logits, backward through the gradient scaler, SGD step.
Each configuration runs in its own subprocess so the peak memory belongs to it alone:
peak resident set size on the CPU (``resource.getrusage``), ``torch.cuda.max_memory_allocated``
on CUDA. A few warmup steps are not timed.

Run: ``.venv/bin/python bench/bench_train.py [--device cpu|cuda] [--backbones mobilenet xception]``
(default: the CPU configurations of BENCHMARKS.md, plus CUDA with AMP when a GPU is present).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nets.deeplabv3_plus import DeepLab  # noqa: E402
from nets.losses import build_criterion  # noqa: E402


def measure(backbone: str, size: int, batch: int, device: str, amp: bool, steps: int, warmup: int) -> dict:
    """Time ``steps`` training iterations after ``warmup`` ones; return images/s and peak memory in MiB."""
    torch.manual_seed(0)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = DeepLab(21, backbone).to(dev).train()
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(dev.type, enabled=amp and cuda)
    criterion = build_criterion("ce")
    images = torch.rand(batch, 3, size, size, device=dev)
    if cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 21, (batch, size, size), device=dev)
    dtype = torch.float16 if cuda else torch.bfloat16

    def step() -> None:
        with torch.autocast(dev.type, dtype=dtype, enabled=amp):
            logits = model(images)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"backbone": backbone, "size": size, "batch": batch, "device": device, "amp": amp,
            "images_per_s": batch * steps / seconds, "ms_per_step": 1000 * seconds / steps, "peak_mib": peak,
            "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--backbones", nargs="+", default=["mobilenet"], choices=("mobilenet", "xception"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # JSON of one configuration (child process)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(**json.loads(args.one))))
        return
    configs = []
    if args.device in ("cpu", "all"):
        for backbone in args.backbones:
            configs += [dict(backbone=backbone, size=512, batch=4, device="cpu", amp=False),
                        dict(backbone=backbone, size=256, batch=8, device="cpu", amp=False)]
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        for backbone in args.backbones:
            for amp in (False, True):
                configs += [dict(backbone=backbone, size=512, batch=16, device="cuda", amp=amp)]
    print("| backbone | input | batch | device | AMP | images/s | ms/step | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for config in configs:
        cuda = config["device"] == "cuda"
        config.update(steps=args.steps * (10 if cuda else 1), warmup=args.warmup * (5 if cuda else 1))
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(config)], capture_output=True,
                             text=True, check=True, cwd=ROOT)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        memory = f"{r['peak_mib']:.0f} ({'max allocated' if cuda else 'peak RSS'})"
        print(f"| {r['backbone']} | {r['size']}x{r['size']} | {r['batch']} | {r['device']} | "
              f"{'fp16' if r['amp'] and cuda else ('bf16' if r['amp'] else 'no')} | {r['images_per_s']:.2f} | "
              f"{r['ms_per_step']:.0f} | {memory} |", flush=True)


if __name__ == "__main__":
    main()
