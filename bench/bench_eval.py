"""Benchmark: the marginal cost per prediction/ground-truth pair of ``get_miou.py --mode eval`` against the
original's ``compute_mIoU``, on grey "L" prediction PNGs as other tools write them.

Writes ``2 N`` pairs (default N = 1000) of 500x375 label maps (VOC-like: background plus a few
blocky and elliptic objects from 21 classes with 255 borders, and an imperfect prediction).
Ground truth is written as palette PNGs (as VOC ships it); predictions as grey "L" PNGs with
PIL's default encoder and with OpenCV's (``--writers``), or as our palette PNGs. Each method scores
the first N pairs and then all 2 N, alternately, ``--rounds`` times; the marginal cost per pair is
``(best time for 2N - best time for N) / N``, so start-up and report drawing do not count.

(a) the baseline, a faithful re-implementation of the original repo's ``compute_mIoU``
    (single process, PIL reads, per-image ``np.bincount`` into a float64 histogram);
(b) ours, ``utils.evaluation.split.score_split``, the function ``get_miou.py --mode eval`` calls
    (``--workers`` threads, default as get_miou.py: one per core).

Both must give the same confusion matrix (checked).

Run: ``.venv/bin/python -m bench.bench_eval [--pairs 1000] [--rounds 3] [--writers pil cv2]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.data.io import save_label
from utils.evaluation.split import score_split


# ---- baseline: the original repo's utils/utils_metrics.py, reproduced as written ----
def fast_hist(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Original: bincount of n * label + pred over labels in [0, n)."""
    k = (a >= 0) & (a < n)
    return np.bincount(n * a[k].astype(int) + b[k], minlength=n**2).reshape(n, n)


def per_class_iu(hist: np.ndarray) -> np.ndarray:
    """Original: absent classes score 0 because of the max(..., 1)."""
    return np.diag(hist) / np.maximum((hist.sum(1) + hist.sum(0) - np.diag(hist)), 1)


def per_class_pa_recall(hist: np.ndarray) -> np.ndarray:
    return np.diag(hist) / np.maximum(hist.sum(1), 1)


def per_class_precision(hist: np.ndarray) -> np.ndarray:
    return np.diag(hist) / np.maximum(hist.sum(0), 1)


def per_accuracy(hist: np.ndarray) -> float:
    return np.sum(np.diag(hist)) / np.maximum(np.sum(hist), 1)


def split_stems(root: Path, split: str) -> list[str]:
    """Original get_miou.py: image_ids = open(<split>.txt).read().splitlines()."""
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().splitlines()


def baseline_compute_miou(gt_dir: Path, pred_dir: Path, png_name_list: list[str], num_classes: int,
                          name_classes: list[str] | None = None):
    """Original compute_mIoU: single process, PIL reads, float64 histogram, progress every 10 images."""
    hist = np.zeros((num_classes, num_classes))
    gt_imgs = [gt_dir / (x + ".png") for x in png_name_list]
    pred_imgs = [pred_dir / (x + ".png") for x in png_name_list]
    progress = []
    for ind in range(len(gt_imgs)):
        pred = np.array(Image.open(pred_imgs[ind]))
        label = np.array(Image.open(gt_imgs[ind]))
        if len(label.flatten()) != len(pred.flatten()):
            continue
        hist += fast_hist(label.flatten(), pred.flatten(), num_classes)
        if name_classes is not None and ind > 0 and ind % 10 == 0:
            # The original prints this line; we keep the computation and drop the terminal I/O.
            progress.append((100 * np.nanmean(per_class_iu(hist)), 100 * np.nanmean(per_class_pa_recall(hist)),
                             100 * per_accuracy(hist)))
    ious = per_class_iu(hist)
    pa_recall = per_class_pa_recall(hist)
    precision = per_class_precision(hist)
    # The original ends with np.array(hist, np.int), which numpy >= 1.24 no longer has.
    return np.array(hist, np.int64), ious, pa_recall, precision


# ---- data ----
def make_pair(rng: np.random.Generator, height: int = 375, width: int = 500, num_classes: int = 21):
    """A VOC-like label map (objects on background, 255 borders) and a plausible imperfect prediction."""
    gt = np.zeros((height, width), np.uint8)
    pred = np.zeros((height, width), np.uint8)
    for _ in range(rng.integers(1, 5)):
        cls = int(rng.integers(1, num_classes))
        wrong = int(rng.integers(1, num_classes)) if rng.random() < 0.25 else cls
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        ax, ay = int(rng.integers(20, 160)), int(rng.integers(20, 140))
        dx, dy = (int(v) for v in rng.integers(-12, 13, 2))
        if rng.random() < 0.5:
            cv2.rectangle(gt, (cx - ax, cy - ay), (cx + ax, cy + ay), cls, -1)
            cv2.rectangle(gt, (cx - ax, cy - ay), (cx + ax, cy + ay), 255, 4)
            cv2.rectangle(pred, (cx - ax + dx, cy - ay + dy), (cx + ax + dx, cy + ay + dy), wrong, -1)
        else:
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(gt, (cx, cy), (ax, ay), angle, 0, 360, cls, -1)
            cv2.ellipse(gt, (cx, cy), (ax, ay), angle, 0, 360, 255, 4)
            cv2.ellipse(pred, (cx + dx, cy + dy), (ax, ay), angle, 0, 360, wrong, -1)
    # Blocky noise: a few coarse cells of the prediction get a random class.
    cells = rng.integers(0, num_classes, (height // 25 + 1, width // 25 + 1)).astype(np.uint8)
    flip = rng.random(cells.shape) < 0.04
    noise = np.kron(np.where(flip, cells, 255), np.ones((25, 25), np.uint8))[:height, :width]
    pred = np.where(noise != 255, noise, pred).astype(np.uint8)
    return gt, pred


WRITERS = {
    "pil": lambda pred, path: Image.fromarray(pred, mode="L").save(path),
    "cv2": lambda pred, path: cv2.imwrite(str(path), pred),
    "palette": save_label,
}


def write_dataset(root: Path, pairs: int, writer: str, seed: int = 0) -> tuple[Path, Path]:
    """``pairs`` ground-truth palette PNGs and predictions written by ``writer``; split files ``half``
    (the first half) and ``all``."""
    gt_dir, pred_dir = root / "SegmentationClass", root / "detection-results"
    for folder in (root / "ImageSets" / "Segmentation", gt_dir, pred_dir):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    stems = [f"2007_{i:06d}" for i in range(pairs)]
    for stem in stems:
        gt, pred = make_pair(rng)
        save_label(gt, gt_dir / f"{stem}.png")
        WRITERS[writer](pred, pred_dir / f"{stem}.png")
    for split, names in (("half", stems[:pairs // 2]), ("all", stems)):
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{s}\n" for s in names))
    return gt_dir, pred_dir


def marginal(root: Path, writer: str, pairs: int, rounds: int, workers: int | None) -> dict[str, float | bool]:
    """Marginal ms per pair of both methods on one prediction format (``2 * pairs`` written), and whether
    their confusion matrices agree."""
    gt_dir, pred_dir = write_dataset(root, 2 * pairs, writer)
    names = [f"c{i}" for i in range(21)]
    runs = {
        "original": lambda split: baseline_compute_miou(gt_dir, pred_dir, split_stems(root, split), 21, names)[0],
        "ours": lambda split: score_split(root, split, pred_dir, 21, workers=workers),
    }
    best: dict[tuple[str, str], float] = {}
    results = {}
    for fn in runs.values():
        fn("half")  # warm page cache and imports
    for _ in range(rounds):
        for split in ("half", "all"):
            for name, fn in runs.items():
                start = time.perf_counter()
                results[name] = fn(split)
                elapsed = time.perf_counter() - start
                best[name, split] = min(best.get((name, split), float("inf")), elapsed)
    out: dict[str, float | bool] = {name: 1e3 * (best[name, "all"] - best[name, "half"]) / pairs for name in runs}
    out["same"] = bool(np.array_equal(results["original"], results["ours"]))
    return out



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1000, help="N: pairs in the marginal step (2 N written)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the best time of each counts")
    parser.add_argument("--writers", nargs="+", choices=sorted(WRITERS), default=["pil", "cv2"],
                        help="how the predictions are written (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="our threads (default: as get_miou.py)")
    args = parser.parse_args()
    print(f"{args.pairs} marginal pairs (of {2 * args.pairs} written), 500x375, 21 classes, best of {args.rounds} "
          f"alternating rounds, {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}")
    print("\n| predictions | original ms/pair | ours ms/pair | ours / original | same confusion matrix |")
    print("|---|---:|---:|---:|---|")
    for writer in args.writers:
        with tempfile.TemporaryDirectory() as tmp:
            result = marginal(Path(tmp), writer, args.pairs, args.rounds, args.workers)
        print(f"| {writer} | {result['original']:.3f} | {result['ours']:.3f} | "
              f"{result['ours'] / result['original']:.2f}x | {result['same']} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
