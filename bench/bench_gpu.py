"""The GPU check of the training recipe (issue 12): one prepared run for a machine with NVIDIA GPUs.

On a synthetic dataset (written here, no downloads) it exercises, each as its own subprocess:

1. one GPU: ``bench/bench_train.py`` with the original's step, ours in fp32 and ours with
   ``--amp`` (fp16 autocast, gradient scaler, channels-last): images/s and peak memory;
2. torchrun over every GPU with ``--sync-bn --amp``, one frozen epoch then one unfrozen
   (the freeze -> unfreeze step under DDP), images/s per epoch from ``metrics.csv``;
3. the same under torchrun, stopped by SIGTERM to the launcher in the middle of the run,
   then ``--resume auto`` to the end;

and writes a BENCHMARKS.md section (``<out>/gpu_check.md``, also printed). On a machine with
one GPU, steps 2 and 3 run torchrun with a single process: that checks the CUDA training loop
with SyncBN requested, the freeze -> unfreeze switch, the stop and the resume, but not the
collectives between ranks (NCCL cannot put two ranks on one GPU); the report says so. Budget:
about 8 minutes on one H200.

    python bench/bench_gpu.py [--out gpu_check] [--size 512] [--dry-run]

``--dry-run`` writes the dataset and prints the commands without running them (works anywhere).
"""

from __future__ import annotations

import argparse
import csv
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_description  # noqa: E402
from nets.spec import ModelSpec, build_model  # noqa: E402
from utils.data.demo import make_demo_dataset  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check", help="work folder: dataset, runs, report [%(default)s]")
    parser.add_argument("--size", type=int, default=512, help="network input size [%(default)s]")
    parser.add_argument("--images", type=int, default=320, help="synthetic training images [%(default)s]")
    parser.add_argument("--batch-per-gpu", type=int, default=16, help="[%(default)s]")
    parser.add_argument("--workers", type=int, default=6, help="loader processes per GPU [%(default)s]")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs for torchrun [all visible]")
    parser.add_argument("--dry-run", action="store_true", help="write the dataset, print the commands, run nothing")
    args = parser.parse_args(argv)
    if args.size < 32 or args.images < 8 or args.batch_per_gpu < 1 or args.workers < 0:
        parser.error("--size >= 32, --images >= 8, --batch-per-gpu >= 1 and --workers >= 0 are needed")
    return args


def prepare(out: Path, images: int, size: int) -> tuple[Path, Path]:
    """The synthetic dataset (images of about the input size) and a bare weights file for the frozen phase."""
    data = out / "data"
    if not (data / "ImageSets" / "Segmentation" / "train.txt").is_file():
        make_demo_dataset(data, seed=0, num_train=images, num_val=max(8, images // 10), size=(size + size // 4, size))
    weights = out / "init.pth"
    if not weights.is_file():
        torch.manual_seed(0)
        torch.save(build_model(ModelSpec(num_classes=5)).state_dict(), weights)  # stands in for released weights
    return data, weights


def train_command(args: argparse.Namespace, gpus: int, data: Path, weights: Path, save_dir: Path) -> list[str]:
    """torchrun over ``gpus`` GPUs: 1 frozen + 2 unfrozen epochs, SyncBN, AMP."""
    batch = args.batch_per_gpu * gpus
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}", "train.py",
            "--data-root", str(data), "--classes", str(data / "classes.txt"), "--weights", str(weights),
            "--input-size", str(args.size), "--epochs", "3", "--freeze-epochs", "1", "--freeze-batch-size",
            str(batch), "--batch-size", str(batch), "--sync-bn", "--amp", "--device", "cuda", "--workers",
            str(args.workers), "--eval-period", "3", "--save-dir", str(save_dir)]


def bench_command(args: argparse.Namespace, data: Path) -> list[str]:
    return [sys.executable, "bench/bench_train.py", "--device", "cuda", "--data-root", str(data), "--size",
            str(args.size), str(args.size), "--batch", str(args.batch_per_gpu), "--workers", str(args.workers),
            "--steps", "40", "--warmup", "10"]


def epoch_rows(save_dir: Path) -> list[dict[str, str]]:
    path = save_dir / "metrics.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def run_ddp(command: list[str], save_dir: Path) -> list[str]:
    """Train under torchrun; report images/s per epoch and the phase of each."""
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    if result.returncode != 0:
        return [f"- torchrun --sync-bn: FAILED (exit {result.returncode}): {result.stderr[-800:]!r}"]
    rows = epoch_rows(save_dir)
    return ["- torchrun --sync-bn --amp, freeze -> unfreeze: epochs "
            + ", ".join(f"{r['epoch']} {r['phase']} {r['images_per_s']} images/s" for r in rows)
            + f"; val mIoU {rows[-1].get('miou', '?')}"]


def run_stop_and_resume(command: list[str], save_dir: Path) -> list[str]:
    """SIGTERM the launcher once epoch 1 is saved; then resume to the end."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 200
    while len(epoch_rows(save_dir)) < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        return ["- stop under DDP: FAILED, the ranks did not exit within 90 s of SIGTERM (hang)"]
    saved = torch.load(save_dir / "last.pth", map_location="cpu", weights_only=True) \
        if (save_dir / "last.pth").is_file() else None
    if saved is None or "interrupted: saved" not in stderr:
        return [f"- stop under DDP: FAILED, no interrupted last.pth: {stderr[-800:]!r}"]
    lines = [f"- stop under DDP: SIGTERM -> last.pth at epoch {saved['epoch']}, iteration {saved['iteration']}"]
    result = subprocess.run([*command, "--resume", "auto"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    rows = epoch_rows(save_dir)
    ok = result.returncode == 0 and [r["epoch"] for r in rows] == ["1", "2", "3"]
    lines.append(f"- resume under DDP: {'ok' if ok else 'FAILED'} (exit {result.returncode}, epochs "
                 f"{[r['epoch'] for r in rows]})" + ("" if ok else f": {result.stderr[-800:]!r}"))
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data, weights = prepare(out, args.images, args.size)
    gpus = args.gpus or torch.cuda.device_count()
    bench = bench_command(args, data)
    ranks = gpus if gpus >= 1 else 2  # a dry run on a machine without GPUs shows the 2-GPU commands
    ddp = train_command(args, ranks, data, weights, out / "ddp")
    stop = train_command(args, ranks, data, weights, out / "stop")
    if args.dry_run:
        for command in (bench, ddp, stop):
            print(shlex.join(command))
        return 0
    if gpus < 1:
        raise SystemExit("no CUDA GPU visible: run with --dry-run to check the set-up only")
    started = time.perf_counter()
    lines = [f"### Training on GPUs ({time.strftime('%Y-%m-%d')})", "",
             f"Machine: {machine_description('cuda')}, {gpus} GPU(s). Synthetic data: {args.images} images, "
             f"input {args.size}x{args.size}, batch {args.batch_per_gpu} per GPU.", "",
             f"`{shlex.join(bench[1:])}`", ""]
    result = subprocess.run(bench, cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines += result.stdout.strip().splitlines() if result.returncode == 0 else [f"FAILED: {result.stderr[-800:]!r}"]
    lines.append("")
    if gpus == 1:
        lines.append("- one GPU: torchrun runs a single process below, so the ranks' collectives are not exercised")
    lines += run_ddp(ddp, out / "ddp")
    lines += run_stop_and_resume(stop, out / "stop")
    lines.append(f"\n(check took {time.perf_counter() - started:.0f} s)")
    text = "\n".join(lines)
    (out / "gpu_check.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
