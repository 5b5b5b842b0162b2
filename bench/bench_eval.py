"""Benchmark: scoring 200 prediction/ground-truth PNG pairs, the original's way versus ours.

Writes 200 pairs of 500x375 label maps (VOC-like: background plus a few blocky and elliptic
objects from 21 classes with 255 borders, and an imperfect prediction) to a temporary folder.
Ground truth is written as palette PNGs (as VOC ships it), predictions as palette PNGs the way
``get_miou.py --mode predict`` writes them (``--pred-format grey``: mode "L", as the original's
get_miou wrote them). Both methods read the very same files. Then, in this one run, it times

(a) the baseline, a faithful re-implementation of the original repo's ``compute_mIoU``
    (single process, PIL reads, per-image ``np.bincount`` into a float64 histogram);
(b) ours, ``utils.evaluation.split.score_split`` (thread pool over ``utils.evaluation.folders.score_folders``), the
    function ``get_miou.py --mode eval`` calls,

alternately, best of ``--repeats`` each, and checks that both give the same confusion matrix.

Run: ``.venv/bin/python bench/bench_eval.py [--pairs 200] [--repeats 5] [--pred-format grey]``
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
from utils.evaluation.scores import compute_scores
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


def split_stems(root: Path) -> list[str]:
    """Original get_miou.py: image_ids = open(<split>.txt).read().splitlines()."""
    return (root / "ImageSets" / "Segmentation" / "val.txt").read_text().splitlines()


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


def write_dataset(root: Path, pairs: int, pred_format: str = "palette", seed: int = 0
                  ) -> tuple[Path, Path, list[str]]:
    """Ground truth as VOC palette PNGs; predictions as ``get_miou.py --mode predict`` writes them
    (palette) or as the original's get_miou wrote them (grey, mode "L")."""
    gt_dir, pred_dir = root / "SegmentationClass", root / "detection-results"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    pred_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    stems = [f"2007_{i:06d}" for i in range(pairs)]
    for stem in stems:
        gt, pred = make_pair(rng)
        save_label(gt, gt_dir / f"{stem}.png")
        if pred_format == "palette":
            save_label(pred, pred_dir / f"{stem}.png")
        else:
            Image.fromarray(pred, mode="L").save(pred_dir / f"{stem}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("".join(f"{s}\n" for s in stems))
    return gt_dir, pred_dir, stems


def best_times(first, second, repeats: int) -> tuple[list[float], list[float], list[object]]:
    """Best-of-``repeats`` wall and process-CPU seconds of two functions, run alternately so both see
    the same machine load. CPU time sums all threads: it is the work done, whatever the load."""
    wall, cpu = [float("inf")] * 2, [float("inf")] * 2
    results: list[object] = [None, None]
    for _ in range(repeats):
        for i, fn in enumerate((first, second)):
            start, start_cpu = time.perf_counter(), time.process_time()
            results[i] = fn()
            wall[i] = min(wall[i], time.perf_counter() - start)
            cpu[i] = min(cpu[i], time.process_time() - start_cpu)
    return wall, cpu, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5, help="best of N alternating runs of each method")
    parser.add_argument("--pred-format", choices=("palette", "grey"), default="palette")
    parser.add_argument("--workers", type=int, default=None, help="our thread count (default: as get_miou.py)")
    args = parser.parse_args()
    load_before = f"{os.getloadavg()[0]:.2f}"
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir, stems = write_dataset(Path(tmp), args.pairs, args.pred_format)
        names = [f"c{i}" for i in range(21)]
        # One untimed pass of each so both start from a warm page cache and warm imports.
        baseline_compute_miou(gt_dir, pred_dir, stems[:10], 21, names)
        score_split(tmp, "val", pred_dir, 21)
        wall, cpu, (base, ours) = best_times(
            lambda: baseline_compute_miou(gt_dir, pred_dir, split_stems(Path(tmp)), 21, names),
            lambda: score_split(tmp, "val", pred_dir, 21, workers=args.workers),
            args.repeats,
        )
    same = np.array_equal(base[0], ours)
    scores = compute_scores(ours)
    print(f"pairs: {args.pairs} x 500x375 PNG, 21 classes, predictions {args.pred_format} PNGs, "
          f"best of {args.repeats}, {os.cpu_count()} CPU(s)")
    print(f"load average before: {load_before}, after: {os.getloadavg()[0]:.2f}")
    print(f"baseline (original compute_mIoU, PIL + float64 bincount, 1 process): wall {wall[0]:.3f} s, "
          f"CPU {cpu[0]:.3f} s")
    print(f"ours (utils.evaluation.split.score_split, as get_miou.py --mode eval): wall {wall[1]:.3f} s, "
          f"CPU {cpu[1]:.3f} s")
    print(f"speed-up (wall): {wall[0] / wall[1]:.2f}x   CPU work ratio: {cpu[0] / cpu[1]:.2f}x   "
          f"identical confusion matrices: {same}")
    print(f"mIoU ours {100 * scores.miou:.2f}%  original-style {100 * np.mean(base[1]):.2f}% "
          "(the two differ only when a class is absent from ground truth and prediction)")


if __name__ == "__main__":
    main()
