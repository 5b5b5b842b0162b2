"""Benchmark: the first training step of each epoch against the median step, on ``train.py --demo``.

Issue 19's defect 6: when the loader's workers started afresh every epoch, the first step of an
epoch took about 2 s against 0.4 s for the others. This runs the README's demo command through
``train.main`` itself (the real loop and loader) and times each step from the arrival of one batch
on the device to the arrival of the next (the last step ends when the epoch returns; the first
starts when the epoch is entered, so it includes whatever the loader does at an epoch's start).

    python -m bench.bench_epoch_start [--save-dir DIR] [-- extra train.py flags]

Prints one row per epoch and the ratio of epochs 2+ first steps to the median of all other
steps (the target is at most 1.5x). The run's files go to a temporary folder unless ``--save-dir``.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import train
from bench.common import machine_description
from utils.training import epoch as epoch_module
from utils.training import trainer as trainer_module


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", help="where the demo run writes (default: a temporary folder)")
    parser.add_argument("train_flags", nargs=argparse.REMAINDER, help="extra train.py flags, after --")
    return parser.parse_args(argv)


def timed_demo(save_dir: str, extra: Sequence[str]) -> list[list[float]]:
    """Step wall times (seconds) of every epoch of ``train.py --demo``."""
    arrivals: list[float] = []
    epochs: list[list[float]] = []
    real_to_device = epoch_module.to_device
    real_train_epoch = trainer_module.train_epoch

    def to_device(*args, **kwargs):
        arrivals.append(time.perf_counter())
        return real_to_device(*args, **kwargs)

    def train_epoch(*args, **kwargs):
        arrivals.clear()
        start = time.perf_counter()
        result = real_train_epoch(*args, **kwargs)
        bounds = [start, *arrivals[1:], time.perf_counter()]
        epochs.append([b - a for a, b in itertools.pairwise(bounds)])
        return result

    epoch_module.to_device, trainer_module.train_epoch = to_device, train_epoch
    try:
        code = train.main(train.parse_args(["--demo", "--save-dir", save_dir, *extra]))
    finally:
        epoch_module.to_device, trainer_module.train_epoch = real_to_device, real_train_epoch
    if code != 0:
        raise SystemExit(f"train.py --demo exited {code}")
    return epochs


def main(args: argparse.Namespace) -> int:
    extra = [flag for flag in args.train_flags if flag != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        epochs = timed_demo(args.save_dir or str(Path(tmp) / "run"), extra)
        total = time.perf_counter() - started
    print(f"\nmachine: {machine_description()}; demo total {total:.1f} s, "
          f"{len(epochs)} epochs x {len(epochs[0])} steps\n")
    print("| epoch | first step s | median step s | first / median |")
    print("|---:|---:|---:|---:|")
    for number, steps in enumerate(epochs, 1):
        median = statistics.median(steps[1:])
        print(f"| {number} | {steps[0]:.2f} | {median:.2f} | {steps[0] / median:.2f}x |")
    others = statistics.median(step for steps in epochs for step in steps[1:])
    later = [steps[0] for steps in epochs[1:]]
    if later:
        print(f"\nepochs 2+: first step mean {statistics.mean(later):.2f} s, max {max(later):.2f} s; median other "
              f"step {others:.2f} s; mean ratio {statistics.mean(later) / others:.2f}x, "
              f"max {max(later) / others:.2f}x (target <= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
