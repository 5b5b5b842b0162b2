"""Real-data comparisons on CamVid, trained from scratch with one shared schedule and scored by get_miou.py.

- ``heads``: the standard head against the paper's atrous separable head (11 classes, val mIoU);
- ``road``: CamVid's road class (3) against everything else, read through ``--label-map`` alone:
  ``--task binary --loss bce+dice`` against a 2-class softmax with ``--loss ce`` (road IoU on val,
  the binary model at its swept threshold and at 0.5).

Each run is ``train.py`` then ``get_miou.py`` in a subprocess, exactly as a user types them (the
commands are printed); the table is printed at the end. CamVid lives outside the repository:
pass its folder with ``--data-root`` (see its README; it is never copied here).

Run: ``.venv/bin/python -m bench.bench_from_scratch --data-root ../shared/datasets/camvid [--epochs 6]``
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import machine_description

ROAD_MAP = "3:1,255:255,*:0"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, help="CamVid in the VOC layout")
    parser.add_argument("--out", default="bench/out/from_scratch", help="runs and reports go here [%(default)s]")
    parser.add_argument("--experiments", nargs="+", choices=("heads", "road"), default=["heads", "road"])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--input-size", type=int, nargs=2, default=(144, 192), metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--amp", action="store_true", help="train every run with train.py --amp (bf16 on the CPU)")
    return parser.parse_args(argv)


def run(command: list[str]) -> float:
    """Run a command (printed first), fail loudly, return its wall time in seconds."""
    print("$ " + shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def score(args: argparse.Namespace, save_dir: Path, name: str, flags: Sequence[str] = ()) -> dict:
    """get_miou.py on the val split with the run's best checkpoint; returns its metrics.json."""
    report = save_dir / name
    run([sys.executable, "get_miou.py", "--weights", str(save_dir / "best.pth"), "--data-root", args.data_root,
         "--out", str(report), "--no-progress", *flags])
    return json.loads((report / "metrics.json").read_text())


def train(args: argparse.Namespace, name: str, flags: list[str]) -> tuple[Path, float]:
    """Train one configuration from scratch; returns its save folder and the wall time."""
    save_dir = Path(args.out) / name
    common = ["--data-root", args.data_root, "--input-size", *map(str, args.input_size),
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--optimizer", "adam",
              "--lr", "1e-3", "--workers", str(args.workers), "--eval-period", str(args.epochs),
              "--save-period", "1000", "--seed", "11", "--save-dir", str(save_dir), *(["--amp"] if args.amp else [])]
    return save_dir, run([sys.executable, "train.py", *common, *flags])


def heads(args: argparse.Namespace) -> list[str]:
    classes = str(Path(args.data_root) / "classes.txt")
    rows = []
    for head in ("standard", "separable"):
        save_dir, seconds = train(args, f"head_{head}", ["--classes", classes, "--head", head])
        metrics = score(args, save_dir, "miou")
        rows.append(f"| {head} | {metrics['miou'] * 100:.2f} | {metrics['accuracy'] * 100:.2f} | {seconds / 60:.1f} |")
    return ["| head | val mIoU % | pixel accuracy % | train minutes |", "|---|---:|---:|---:|", *rows]


def road(args: argparse.Namespace) -> list[str]:
    flags = ["--label-map", ROAD_MAP]
    binary_dir, binary_s = train(args, "road_binary", [*flags, "--task", "binary", "--loss", "bce+dice"])
    swept = score(args, binary_dir, "miou")
    half = score(args, binary_dir, "miou_t05", ["--threshold", "0.5"])
    softmax_dir, softmax_s = train(args, "road_ce", [*flags, "--num-classes", "2", "--loss", "ce"])
    road_class = score(args, softmax_dir, "miou")["per_class"][1]
    rows = [f"| binary, bce+dice, swept threshold {swept['threshold']} | {swept['iou'] * 100:.2f} | "
            f"{swept['dice'] * 100:.2f} | {binary_s / 60:.1f} |",
            f"| binary, bce+dice, threshold 0.5 | {half['iou'] * 100:.2f} | {half['dice'] * 100:.2f} | |",
            f"| 2-class softmax, ce | {road_class['iou'] * 100:.2f} | {road_class['dice'] * 100:.2f} | "
            f"{softmax_s / 60:.1f} |"]
    return ["| model | road IoU % | road Dice % | train minutes |", "|---|---:|---:|---:|", *rows]


def main(args: argparse.Namespace) -> int:
    tables = {"heads": heads, "road": road}
    out = [f"machine: {machine_description()}",
           f"schedule: {args.epochs} epochs from scratch, input {args.input_size[0]}x{args.input_size[1]}, "
           f"batch {args.batch_size}, Adam lr 1e-3 (scaled to batch), {'bf16 --amp' if args.amp else 'fp32'}, "
           "CamVid train 367 / val 101"]
    for name in args.experiments:
        out += ["", *tables[name](args)]
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
