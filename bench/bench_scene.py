"""Raster scenes larger than memory: peak RSS, seconds per megapixel and the time outside the forward pass.

For each size (default 4000, 8000 and 16000 px a side) a 4-band uint16 GeoTIFF scene is generated
on disk (tiled, deflate, values 0..5700 like Sentinel-2 reflectance, written strip by strip in
bounded memory, kept in ``--data-dir`` for the next run). A fresh Python process then builds a
MobileNetV2 DeepLabV3+ (random weights, ``--classes`` classes, 4 input bands, 512x512 windows,
overlap 0.33, the scene's default batch (1 window on a CPU), the default precision ``fastest``) and
predicts the scene with
:func:`utils.geo.scene.predict_scene` into a class GeoTIFF (+ preview). It reports the wall
seconds of that call, seconds per megapixel, the share of the time spent outside the network's
forward pass (reading, filling, averaging, writing, overviews, preview), and the process's peak
RSS (``ru_maxrss``: Python, torch, model and the blocks). The targets (issue 20): peak RSS at most
1.0 GiB and flat, seconds per megapixel within 15% across sizes, outside share at most 25%.

Run: ``.venv/bin/python -m bench.bench_scene [--sizes 4000 8000 16000]``; quick check: ``--sizes 1000 2000``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import peak_rss_mib, run_child

BANDS = 4
TOP = 5700  # Sentinel-2 reflectance spans about 0..5700
STRIP = 512


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[4000, 8000, 16000], metavar="N",
                        help="scene sides in pixels (default 4000 8000 16000)")
    parser.add_argument("--classes", type=int, default=6, help="classes (default 6, as ISPRS Potsdam)")
    parser.add_argument("--window", type=int, default=512, help="window (input) size (default 512)")
    parser.add_argument("--batch-size", type=int, help="windows per forward pass (default: the scene's, 1 on a CPU)")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--data-dir", type=Path, default=Path("/tmp/bench_scene"),
                        help="where the generated scenes are kept (default /tmp/bench_scene)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def make_scene(path: Path, side: int) -> Path:
    """A side x side 4-band uint16 GeoTIFF (UTM 33N, 10 m pixels) of smooth fields plus noise, strip by strip."""
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.partial")
    rng = np.random.default_rng(0)
    cols = np.arange(side, dtype=np.float32)[None, :]
    profile = {"driver": "GTiff", "width": side, "height": side, "count": BANDS, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": from_origin(500000.0, 4600000.0, 10.0, 10.0), "tiled": True,
               "blockxsize": 512, "blockysize": 512, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
    with rasterio.open(temp, "w", **profile) as dataset:
        for top in range(0, side, STRIP):
            rows = np.arange(top, min(top + STRIP, side), dtype=np.float32)[:, None]
            for band in range(BANDS):
                field = np.sin(cols / (97 + 31 * band)) * np.cos(rows / (131 + 17 * band))
                noise = rng.random(field.shape, dtype=np.float32)
                values = (0.5 + 0.4 * field + 0.1 * noise) * TOP
                dataset.write(values.astype(np.uint16), band + 1,
                              window=rasterio.windows.Window(0, top, side, rows.shape[0]))
    temp.replace(path)
    return path


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    import tempfile

    import torch

    from bench.common import machine_description
    from nets.spec import ModelSpec, build_model
    from utils.geo.scene import SceneOptions, predict_scene
    from utils.inference.options import InferenceOptions
    from utils.inference.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    source = args.data_dir / f"scene_{args.child}.tif"
    spec = ModelSpec(num_classes=args.classes, in_channels=BANDS, input_size=(args.window, args.window))
    model = build_model(spec, init="pytorch").eval()
    predictor = Predictor(model, spec, InferenceOptions(device="cpu", precision="fastest", mode="slide"))
    del model
    backend = predictor.engine.backend
    forward = {"seconds": 0.0, "windows": 0}

    def timed(batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = backend(batch)
        forward["seconds"] += time.perf_counter() - start
        forward["windows"] += batch.shape[0]
        return out

    predictor.engine.backend = timed
    with tempfile.TemporaryDirectory(dir=args.data_dir) as out_dir:
        start = time.perf_counter()
        predict_scene(predictor, source, Path(out_dir) / "classes.tif",
                      SceneOptions(batch_size=args.batch_size, progress=False))
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "forward_seconds": forward["seconds"], "windows": forward["windows"],
                      "peak_mib": peak_rss_mib(), "machine": machine_description()}))


def main(args: argparse.Namespace) -> None:
    rows = []
    passthrough = ["--classes", str(args.classes), "--window", str(args.window), "--data-dir", str(args.data_dir)]
    if args.batch_size:
        passthrough += ["--batch-size", str(args.batch_size)]
    if args.threads:
        passthrough += ["--threads", str(args.threads)]
    for side in args.sizes:
        start = time.perf_counter()
        make_scene(args.data_dir / f"scene_{side}.tif", side)
        print(f"{side}^2 scene ready ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
        record = run_child("bench.bench_scene", [str(side), *passthrough])
        record["side"] = side
        rows.append(record)
        print(f"{side}^2: {record['seconds']:.0f} s, peak RSS {record['peak_mib']:.0f} MiB", file=sys.stderr,
              flush=True)
    print(f"Machine: {rows[0]['machine']}; mobilenet, {args.classes} classes, 4-band uint16 scenes, "
          f"{args.window}x{args.window} windows, overlap 0.33, batch {args.batch_size or 'default'}, "
          "precision fastest; one fresh process per size")
    print("| scene (px) | megapixels | windows run | seconds | s / MP | vs smallest | outside forward | "
          "peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = rows[0]["seconds"] / (rows[0]["side"] ** 2 / 1e6)
    for r in rows:
        per_mp = r["seconds"] / (r["side"] ** 2 / 1e6)
        outside = 1 - r["forward_seconds"] / r["seconds"]
        print(f"| {r['side']} x {r['side']} | {r['side'] ** 2 / 1e6:.0f} | {r['windows']} | {r['seconds']:.0f} | "
              f"{per_mp:.2f} | {per_mp / base:.2f}x | {outside:.0%} | {r['peak_mib']:.0f} |")


if __name__ == "__main__":
    parsed = parse_args()
    if parsed.child:
        child(parsed)
    else:
        main(parsed)
