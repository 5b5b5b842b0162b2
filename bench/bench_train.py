"""Benchmark: training throughput (images/s) and peak memory, the original release's step next to ours.

Both sides train the same DeepLab (same backbone, classes, input size, batch, Adam, CE loss) on
batches from their own data loader, in the same run, each configuration in its own subprocess
(so its peak memory is its own):

- ``original``: a BASELINE rebuild of the original's ``fit_one_epoch`` training step, fed by
  its loader (``bench/original_loader.py``: float64 image and one-hot label per sample, the
  original collate to float32 image, int64 label and float32 one-hot) and its model (the same
  network in NCHW with PyTorch's ``nn.Dropout``, :func:`original_model`): ``model.train()``,
  ``optimizer.zero_grad()``, forward, its ``CE_Loss`` (NHWC view, ``ignore_index=num_classes``,
  class weights of ones) plus ``Dice_loss`` with ``--dice``, its ``f_score`` under ``no_grad``,
  backward, step, and ``loss.item()`` / ``f_score.item()``. Its fp16 switch works only on
  CUDA, so on the CPU it runs in float32 only.
- ``ours`` / ``ours --amp``: the real loop, :func:`utils.training.epoch.train_epoch`, on the
  loader and parts that ``train.py`` builds (:func:`utils.training.builder.build_run`).

Timing starts after ``--warmup`` steps and covers ``--steps`` steps including data loading
(the loaders run ``--workers`` processes). Peak memory: peak RSS of the training process
(``resource.getrusage``), ``torch.cuda.max_memory_allocated`` on CUDA. With ``--rounds N``
each configuration runs N times and the best round is kept.

    python bench/bench_train.py [--data-root DIR] [--size 192 256] [--batch 8] [--steps 6] [--rounds 2]

Default data: CamVid from ``../shared/datasets/camvid`` when present, else the demo dataset.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine_description  # noqa: E402
from bench.original_loader import OriginalDeeplabDataset  # noqa: E402
from nets.spec import ModelSpec, build_model  # noqa: E402
from utils.data.dataset import SegmentationDataset  # noqa: E402
from utils.data.demo import make_demo_dataset  # noqa: E402
from utils.data.io import read_class_names  # noqa: E402
from utils.training.stop import StopRequest  # noqa: E402

# ../shared beside the main checkout, or two levels up from a worktree in /work/wt/<name>.
CAMVID = next((path.resolve() for path in (ROOT.parent / "shared" / "datasets" / "camvid",
                                           ROOT.parent.parent / "shared" / "datasets" / "camvid") if path.is_dir()),
              ROOT.parent / "shared" / "datasets" / "camvid")


def original_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The original's ``deeplab_dataset_collate``."""
    images, pngs, labels = zip(*batch, strict=True)
    return (torch.from_numpy(np.array(images)).type(torch.FloatTensor), torch.from_numpy(np.array(pngs)).long(),
            torch.from_numpy(np.array(labels)).type(torch.FloatTensor))


def original_ce(inputs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The original's ``CE_Loss``."""
    flat = inputs.transpose(1, 2).transpose(2, 3).contiguous().view(-1, inputs.shape[1])
    return torch.nn.CrossEntropyLoss(weight=weights, ignore_index=num_classes)(flat, target.view(-1))


def _original_overlap(inputs: torch.Tensor, target: torch.Tensor, threshold: float | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """tp, fp, fn per class as the original's ``Dice_loss`` (soft) and ``f_score`` (thresholded) count them."""
    n, c = inputs.shape[:2]
    probs = torch.softmax(inputs.transpose(1, 2).transpose(2, 3).contiguous().view(n, -1, c), -1)
    if threshold is not None:
        probs = torch.gt(probs, threshold).float()
    flat = target.view(n, -1, target.shape[-1])
    tp = torch.sum(flat[..., :-1] * probs, axis=[0, 1])
    return tp, torch.sum(probs, axis=[0, 1]) - tp, torch.sum(flat[..., :-1], axis=[0, 1]) - tp


def original_dice(inputs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """The original's ``Dice_loss`` (beta 1)."""
    tp, fp, fn = _original_overlap(inputs, target, None)
    return 1 - torch.mean((2 * tp + smooth) / (2 * tp + fn + fp + smooth))


def original_f_score(inputs: torch.Tensor, target: torch.Tensor, smooth: float = 1e-5) -> torch.Tensor:
    """The original's ``f_score`` (beta 1, threshold 0.5; computed every training step under ``no_grad``)."""
    tp, fp, fn = _original_overlap(inputs, target, 0.5)
    return torch.mean((2 * tp + smooth) / (2 * tp + fn + fp + smooth))


def original_model(num_classes: int, backbone: str) -> torch.nn.Module:
    """The original's DeepLab: ours (same keys and function) with PyTorch's own ``nn.Dropout``, in NCHW."""
    model = build_model(ModelSpec(backbone=backbone, num_classes=num_classes), init="pytorch")
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, torch.nn.Dropout):
                setattr(module, name, torch.nn.Dropout(child.p))
    return model


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_original(cfg: dict[str, Any]) -> dict[str, Any]:
    """Images/s of the original's training step over its own loader."""
    device = torch.device(cfg["device"])
    ours = SegmentationDataset(cfg["data_root"], "train", tuple(cfg["size"]), cfg["num_classes"], True)
    dataset = OriginalDeeplabDataset([ours.image_path(i) for i in range(len(ours))],
                                     [ours.label_path(i) for i in range(len(ours))], tuple(cfg["size"]),
                                     cfg["num_classes"], train=True)
    loader = DataLoader(dataset, batch_size=cfg["batch"], shuffle=True, num_workers=cfg["workers"],
                        pin_memory=device.type == "cuda", drop_last=True, collate_fn=original_collate)
    model = original_model(cfg["num_classes"], cfg["backbone"]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), cfg["lr"], betas=(0.9, 0.999), weight_decay=0)
    weights = torch.from_numpy(np.ones([cfg["num_classes"]], np.float32)).to(device)
    total_loss, total_f_score, started, steps = 0.0, 0.0, 0.0, cfg["warmup"] + cfg["steps"]
    model.train()
    for step, (imgs, pngs, labels) in enumerate(loader):
        if step == cfg["warmup"]:
            started = time.perf_counter()
        if step == steps:
            break
        imgs, pngs, labels = imgs.to(device), pngs.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(imgs)
        loss = original_ce(outputs, pngs, weights, cfg["num_classes"])
        if cfg["dice"]:
            loss = loss + original_dice(outputs, labels)
        with torch.no_grad():
            f_score = original_f_score(outputs, labels)
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
        total_f_score += f_score.item()
    seconds = time.perf_counter() - started
    return {"images_per_s": cfg["batch"] * cfg["steps"] / seconds, "peak_mib": _peak_mib(device)}


class StopAfter(StopRequest):
    """Times the loop from the stop-flag reads (one per iteration): stops after warmup + steps iterations."""

    def __init__(self, warmup: int, steps: int) -> None:
        super().__init__()
        self.reads, self.warmup, self.steps, self.started = 0, warmup, steps, 0.0

    @property
    def requested(self) -> bool:
        if self.reads == self.warmup:
            self.started = time.perf_counter()
        self.reads += 1
        return self.reads > self.warmup + self.steps

    @requested.setter
    def requested(self, value: bool) -> None:
        pass


def measure_ours(cfg: dict[str, Any]) -> dict[str, Any]:
    """Images/s of train.py's loop (the real train_epoch over the loader build_run makes)."""
    from train import parse_args
    from utils.training.distributed import DistContext
    from utils.training.epoch import train_epoch
    from utils.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as scratch:
        argv = ["--data-root", cfg["data_root"], "--num-classes", str(cfg["num_classes"]), "--input-size",
                *map(str, cfg["size"]), "--backbone", cfg["backbone"], "--batch-size", str(cfg["batch"]),
                "--optimizer", "adam", "--lr", str(cfg["lr"] * 16 / cfg["batch"]), "--weight-decay", "0",
                "--epochs", "1", "--workers", str(cfg["workers"]), "--device", cfg["device"],
                "--save-dir", str(Path(scratch) / "run"), *(["--amp"] if cfg["amp"] else []),
                *(["--dice"] if cfg["dice"] else [])]
        options = parse_args(argv)
        device = torch.device(cfg["device"])
        trainer = Trainer(options, DistContext(device=device))
        trainer.enter_phase(False)
        stop = StopAfter(cfg["warmup"], cfg["steps"])
        result = train_epoch(trainer.parts, trainer.model, trainer.train_loader, 0, stop)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - stop.started
        assert result.done == cfg["warmup"] + cfg["steps"], result.done
    return {"images_per_s": cfg["batch"] * cfg["steps"] / seconds, "peak_mib": _peak_mib(device)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", help="VOC-layout dataset (default: ../shared/datasets/camvid, else demo)")
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--backbone", default="mobilenet", choices=("mobilenet", "xception"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="runs per configuration; the best is kept")
    parser.add_argument("--dice", action="store_true", help="add the dice loss on both sides")
    parser.add_argument("--modes", nargs="+", default=["original", "ours", "ours-amp"],
                        choices=("original", "ours", "ours-amp"))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # JSON of one configuration (child process)
    return parser.parse_args(argv)


def resolve_data(data_root: str | None, scratch: Path) -> tuple[str, str, int]:
    """(root, name, number of classes): the given folder, CamVid, or a generated demo dataset."""
    if data_root is None and CAMVID.is_dir():
        data_root = str(CAMVID)
    if data_root is None:
        data_root = str(make_demo_dataset(scratch / "demo", seed=0, num_train=64, num_val=4, size=(256, 192)))
    root = Path(data_root)
    names = read_class_names(root / "classes.txt") if (root / "classes.txt").is_file() else None
    if names is None:
        raise SystemExit(f"{root}/classes.txt is missing: the benchmark needs the class list")
    return data_root, ("CamVid" if root.resolve() == CAMVID else root.name), len(names)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.one:
        cfg = json.loads(args.one)
        print(json.dumps(measure_original(cfg) if cfg["mode"] == "original" else measure_ours(cfg)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        data_root, data_name, num_classes = resolve_data(args.data_root, Path(scratch))
        base = dict(data_root=data_root, num_classes=num_classes, size=args.size, batch=args.batch,
                    backbone=args.backbone, device=args.device, workers=args.workers, steps=args.steps,
                    warmup=args.warmup, dice=args.dice, lr=5e-4)
        print(f"{machine_description(args.device)}; {data_name} {args.size[0]}x{args.size[1]}, batch {args.batch}, "
              f"{args.backbone}, Adam, CE{' + dice' if args.dice else ''}, {args.workers} loader workers, "
              f"{args.steps} timed steps after {args.warmup}, best of {args.rounds} round(s)")
        print("| training step | precision | images/s | vs original fp32 | peak memory (MiB) |")
        print("|---|---|---|---|---|")
        reference = None
        for mode in args.modes:
            cfg = dict(base, mode=mode, amp=mode == "ours-amp")
            runs = []
            for _ in range(args.rounds):
                out = subprocess.run([sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True,
                                     text=True, cwd=ROOT)
                if out.returncode != 0:
                    raise SystemExit(f"{mode} failed:\n{out.stderr[-3000:]}")
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            best = max(runs, key=lambda r: r["images_per_s"])
            if mode == "original":
                reference = best["images_per_s"]
            cuda = torch.device(args.device).type == "cuda"
            precision = ("fp16" if cuda else "bf16") + " autocast" if cfg["amp"] else "fp32"
            ratio = f"{best['images_per_s'] / reference:.2f}x" if reference else "-"
            memory = f"{best['peak_mib']:.0f} ({'max allocated' if cuda else 'peak RSS'})"
            print(f"| {mode.replace('-amp', ' --amp')} | {precision} | {best['images_per_s']:.2f} | {ratio} | "
                  f"{memory} |", flush=True)


if __name__ == "__main__":
    main()
