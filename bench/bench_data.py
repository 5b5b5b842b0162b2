"""Data-loader benchmark: per-sample CPU time and bytes, this toolkit vs the original release's recipe.

Measures, in one process with one thread (workers=0, so the figure is the CPU cost of one
sample), the time to produce one training sample and one validation sample at 512x512 and the
bytes that sample occupies, for :class:`utils.data.dataset.SegmentationDataset` and for the BASELINE
rebuild of the original loader in ``bench/original_loader.py``. Each figure includes turning
the sample into the CPU tensors the training step receives (the original's float32 image and
one-hot, our uint8 image and label). Data: CamVid from ``../shared/datasets/camvid`` when
present, else the built-in demo dataset. Prints a markdown table.

    python bench/bench_data.py [--data-root DIR] [--samples 100] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

# Run as a script from anywhere: make the repository root importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.original_loader import OriginalDeeplabDataset
from utils.data.dataset import SegmentationDataset
from utils.data.demo import DEMO_CLASSES, make_demo_dataset
from utils.data.io import read_class_names
from utils.errors import run_cli

REPO_ROOT = Path(sys.path[0])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=None,
                        help="VOC-layout dataset (default: ../shared/datasets/camvid, else the demo data)")
    parser.add_argument("--samples", type=int, default=100, help="samples timed per loader and split")
    parser.add_argument("--size", type=int, default=512, help="square input size")
    parser.add_argument("--num-classes", type=int, default=None,
                        help="class count (default: from classes.txt); 21 shows the original's VOC-sized one-hot")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV/torch threads (1 = per-sample CPU cost)")
    return parser.parse_args(argv)


def _timed_pair(fns: dict[str, Callable[[int], int]], count: int, length: int) -> dict[str, tuple[float, int]]:
    """Mean CPU milliseconds per sample of each loader and its byte count.

    The loaders alternate sample by sample so that both see the same machine load, and the
    time is this process's CPU time (one thread), so other programs on the machine inflate it little.
    """
    totals = dict.fromkeys(fns, 0.0)
    nbytes = dict.fromkeys(fns, 0)
    for i in range(3):
        for fn in fns.values():
            fn(i % length)
    for i in range(count):
        for name, fn in fns.items():
            start = time.process_time()
            nbytes[name] = fn(i % length)
            totals[name] += time.process_time() - start
    return {name: (1000.0 * totals[name] / count, nbytes[name]) for name in fns}


def _ours(dataset: SegmentationDataset) -> Callable[[int], int]:
    def sample(i: int) -> int:
        image, label = dataset[i]
        return image.numel() * image.element_size() + label.numel() * label.element_size()
    return sample


def _original(dataset: OriginalDeeplabDataset) -> Callable[[int], int]:
    def sample(i: int) -> int:
        jpg, png, seg = dataset[i]
        # What the original collate hands to the training step (float32 image and one-hot, int64 label).
        tensors = (torch.from_numpy(jpg).float(), torch.from_numpy(png).long(), torch.from_numpy(seg).float())
        del tensors
        return jpg.nbytes + png.nbytes + seg.nbytes
    return sample


def _resolve_root(data_root: str | None, scratch: Path) -> tuple[Path, str]:
    if data_root is not None:
        return Path(data_root), Path(data_root).name
    camvid = (REPO_ROOT / ".." / "shared" / "datasets" / "camvid").resolve()
    if camvid.is_dir():
        return camvid, "CamVid"
    return make_demo_dataset(scratch / "demo"), "demo data"


def main(args: argparse.Namespace) -> int:
    """Run the benchmark and print a markdown table."""
    cv2.setNumThreads(args.threads)
    torch.set_num_threads(args.threads)
    size = (args.size, args.size)
    with tempfile.TemporaryDirectory() as scratch:
        root, name = _resolve_root(args.data_root, Path(scratch))
        classes_file = root / "classes.txt"
        class_names = read_class_names(classes_file) if classes_file.is_file() else (
            list(DEMO_CLASSES) if name == "demo data" else None)
        num_classes = args.num_classes or (len(class_names) if class_names else 21)
        rows = {}
        for split, train in (("train", True), ("val", False)):
            ours = SegmentationDataset(root, split, size, num_classes, train=train)
            ours.set_rng(np.random.default_rng(0))
            np.random.seed(0)  # the baseline draws from the legacy global generator, as the original did
            original = OriginalDeeplabDataset([ours.image_path(i) for i in range(len(ours))],
                                              [ours.label_path(i) for i in range(len(ours))],
                                              size, num_classes, train)
            count = min(args.samples, len(ours)) if not train else args.samples
            rows[split] = _timed_pair({"ours": _ours(ours), "original": _original(original)}, count, len(ours))
    mb = 1024 * 1024
    print(f"data: {name} ({root}), {num_classes} classes, input {args.size}x{args.size}, "
          f"{args.samples} samples per figure, 1 process, {args.threads} thread(s), "
          f"{os.cpu_count()} CPU(s), {platform.processor() or platform.machine()}\n")
    print("| loader | train CPU ms/sample | val CPU ms/sample | bytes/sample (train) |")
    print("| --- | ---: | ---: | ---: |")
    for loader, label in (("original", "original release (baseline rebuild, float64 + one-hot)"),
                          ("ours", "this toolkit (uint8, no one-hot)")):
        train_ms, train_bytes = rows["train"][loader]
        val_ms, _ = rows["val"][loader]
        print(f"| {label} | {train_ms:.1f} | {val_ms:.1f} | {train_bytes:,} ({train_bytes / mb:.1f} MiB) |")
    speed_train = rows["train"]["original"][0] / rows["train"]["ours"][0]
    speed_val = rows["val"]["original"][0] / rows["val"]["ours"][0]
    size_ratio = rows["train"]["original"][1] / rows["train"]["ours"][1]
    print(f"| ratio original / ours | {speed_train:.1f}x | {speed_val:.1f}x | {size_ratio:.0f}x |")
    return 0


if __name__ == "__main__":
    run_cli(lambda argv: main(parse_args(argv)))
