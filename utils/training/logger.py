"""What a training run shows and writes: the config summary, progress bars, metrics.csv, config.json,
TensorBoard scalars and images, and the loss/mIoU curves.

Everything here runs on rank 0 only (the training loop builds a :class:`RunLogger` with
``enabled=False`` on the other ranks). Files are rewritten from the full history each epoch,
so a resumed run produces the same files as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from utils.data.io import voc_palette
from utils.inference.visualize import colorize

METRIC_FIELDS = ("epoch", "phase", "lr", "train_loss", "val_loss", "miou", "mpa", "accuracy", "iou", "dice",
                 "threshold", "seconds", "images_per_s")
# All 256 VOC colours, so that the ignore value 255 in ground-truth masks shows in its usual cream.
VOC_COLOURS = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)


def format_summary(config: dict[str, Any], extra: dict[str, Any]) -> str:
    """One screen describing the run: model, data, schedule, hardware and where files go."""
    size = "x".join(str(v) for v in config["input_size"])
    names = config.get("class_names") or []
    shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
    rows = [
        ("model", f"DeepLabV3+ {config['backbone']}, {config.get('head', 'standard')} head, "
                  f"output stride {config['downsample_factor']}, "
                  f"{config['num_classes']} classes" + (f" ({shown})" if shown else "")),
        ("init", extra["init"]),
        ("data", f"{config['data_root']}: {extra['num_train']} train / {extra['num_val']} val images, "
                 f"input {size}"),
        ("schedule", f"{config['epochs']} epochs "
                     + (f"({config['freeze_epochs']} with the backbone frozen at batch {config['freeze_batch_size']}"
                        + (", BatchNorm statistics fixed" if config.get("freeze_bn") else "")
                        + f", then batch {config['batch_size']}), " if config["freeze_epochs"]
                        else f"at batch {config['batch_size']}, no frozen phase"
                        + ("" if config.get("pretrained") or config.get("weights") or config.get("resume")
                           else " (no backbone weights loaded)") + ", ")
                     + f"{config['optimizer']} lr {config['lr']:g} -> {config['min_lr']:g} ({config['lr_schedule']}), "
                     f"scaled to batch: {extra['lr_note']}"),
        ("loss", config["loss"] + (" + dice" if config["dice"] else "")
         + (f", class weights {extra['class_weights']}" if extra.get("class_weights") else "")),
        ("hardware", f"{extra['device']}, {extra['world_size']} process(es)"
                     + (", AMP " + extra["amp_dtype"] if config["amp"] else "")
                     + (", SyncBN" if extra.get("sync_bn") else "") + f", {config['workers']} workers"),
        ("evaluate", f"every {config['eval_period']} epochs (val loss + full-resolution mIoU)"),
        ("save", f"{config['save_dir']} (last.pth, best.pth, epoch_NNN.pth every {config['save_period']})"),
    ]
    if extra.get("resume"):
        rows.insert(2, ("resume", extra["resume"]))
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key:<{width}} : {value}" for key, value in rows)


def progress(iterable: Iterable, total: int, desc: str, enabled: bool) -> tqdm:
    """A tqdm bar on rank 0 (a silent pass-through object elsewhere)."""
    return tqdm(iterable, total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=True)


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


class RunLogger:
    """Writes config.json, metrics.csv, loss.png, miou.png and TensorBoard events into ``save_dir``.

    Args:
        save_dir: run folder (created).
        enabled: False on every rank but 0: then all methods do nothing.
        purge_step: first epoch of this run; TensorBoard drops events at or after it that an
            interrupted earlier run had written, so resumed curves do not zig-zag.
    """

    def __init__(self, save_dir: str | os.PathLike, enabled: bool = True, purge_step: int | None = None) -> None:
        self.save_dir = Path(save_dir)
        self.enabled = enabled
        self.writer = None
        if enabled:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            # Imported lazily: TensorBoard is slow to import and the non-zero ranks never need it.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.save_dir / "tensorboard"), purge_step=purge_step)

    def write_config(self, config: dict[str, Any]) -> None:
        """Write the run's full configuration as config.json."""
        if self.enabled:
            text = json.dumps(config, indent=2, sort_keys=True, default=str)
            (self.save_dir / "config.json").write_text(text + "\n", encoding="utf-8")

    def log_epoch(self, history: Sequence[dict[str, Any]]) -> None:
        """Rewrite metrics.csv and the curves from ``history``; send its last row to TensorBoard."""
        if not self.enabled or not history:
            return
        with open(self.save_dir / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            for row in history:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_FIELDS})
        row = history[-1]
        step = int(row["epoch"])
        for key, tag in (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("lr", "lr"), ("miou", "val/miou"),
                         ("mpa", "val/mpa"), ("images_per_s", "speed/images_per_s")):
            value = row.get(key)
            if value is not None:
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()
        self._plot(history)

    def log_images(self, epoch: int, samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Show validation images as ``image | ground truth | prediction`` strips in TensorBoard."""
        if not self.enabled:
            return
        for index, (image, label, pred) in enumerate(samples):
            strip = np.concatenate([image, colorize(label, VOC_COLOURS), colorize(pred, VOC_COLOURS)], axis=1)
            self.writer.add_image(f"val/sample_{index}", strip, epoch, dataformats="HWC")
        self.writer.flush()

    def _plot(self, history: Sequence[dict[str, Any]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt

        epochs = [int(r["epoch"]) for r in history]
        curves = {
            "loss.png": (("train_loss", "train loss"), ("val_loss", "val loss")),
            "miou.png": (("miou", "val mIoU"),),
        }
        for name, series in curves.items():
            fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
            for key, label in series:
                points = [(e, _as_float(r.get(key))) for e, r in zip(epochs, history, strict=True)]
                points = [(e, v) for e, v in points if not math.isnan(v)]
                if points:
                    ax.plot(*zip(*points, strict=True), marker="." if len(points) < 30 else None, label=label)
            ax.set_xlabel("epoch")
            ax.set_ylabel("mIoU" if name == "miou.png" else "loss")
            ax.grid(True, alpha=0.3)
            if ax.lines:
                ax.legend()
            fig.tight_layout()
            tmp = self.save_dir / f".{name}.tmp.png"
            fig.savefig(tmp)
            plt.close(fig)
            os.replace(tmp, self.save_dir / name)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
