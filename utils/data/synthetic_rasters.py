"""Synthetic 4-band uint16 GeoTIFF scenes where only the 4th band tells the classes apart.

A check that multi-band training really uses every band: bands 1-3 are textures of the same
distribution whatever the class, and band 4 (think near-infrared) holds a level per class
(about 1000, 2000, 3000 of 65535, plus noise), so a model that learns anything learns it from
band 4, and the values are far below what dividing by 65535 would make visible. Classes form
smooth blobs of a few dozen pixels. Each scene is written with its label scene (single-band
uint8 GeoTIFF, same CRS and transform), ready for ``voc_annotation.py --from-rasters``::

    python -m utils.data.synthetic_rasters --out data/scenes --scenes 6 --size 512
    python voc_annotation.py --from-rasters data/scenes/images data/scenes/labels --tile 128 \\
        --stride 64 --data-root data/tiles --num-classes 3

The tests use :func:`write_scene_pair` and :func:`make_scene` directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from utils.errors import UserError, run_cli

CLASS_NAMES = ("background", "low", "high")
# Band 4's level per class, and the spread of the noise on every band.
LEVELS = (1000.0, 2000.0, 3000.0)
NOISE = 150.0
# An arbitrary projected CRS (UTM zone 33N) and pixel size for the scenes' georeferencing.
CRS = "EPSG:32633"
PIXEL = 10.0


def _smooth_field(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in [about -2, 2]: random values every ``cell`` pixels, interpolated bicubically."""
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    field = cv2.resize(coarse, ((width // cell + 2) * cell, (height // cell + 2) * cell),
                       interpolation=cv2.INTER_CUBIC)
    return field[:height, :width]


def make_scene(rng: np.random.Generator, height: int, width: int, cell: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A (height, width, 4) uint16 image and its (height, width) uint8 label of classes 0, 1, 2 (see the
    module docstring); each pixel's class is the largest of three independent smooth fields, so the classes
    form compact blobs of about ``cell`` pixels and each covers about a third of the scene."""
    label = np.argmax(np.stack([_smooth_field(rng, height, width, cell) for _ in CLASS_NAMES]), axis=0)
    label = label.astype(np.uint8)
    bands = [1500 + 600 * _smooth_field(rng, height, width, cell // 2) + rng.normal(0, NOISE, (height, width))
             for _ in range(3)]
    bands.append(np.asarray(LEVELS, dtype=np.float64)[label] + rng.normal(0, NOISE, (height, width)))
    image = np.clip(np.stack(bands, axis=2), 1, 65535).round().astype(np.uint16)
    return image, label


def write_scene_pair(image_path: str | Path, label_path: str | Path, image: np.ndarray, label: np.ndarray,
                     origin: tuple[float, float] = (500000.0, 5000000.0), crs: str = CRS,
                     nodata: float | None = None) -> None:
    """Write an (H, W, C) image and its (H, W) label as GeoTIFFs with the same CRS and transform
    (top-left corner at ``origin``, :data:`PIXEL` metres per pixel)."""
    import rasterio
    from affine import Affine

    transform = Affine(PIXEL, 0.0, origin[0], 0.0, -PIXEL, origin[1])
    height, width = label.shape
    for path, data, value in ((image_path, image, nodata), (label_path, label[:, :, None], None)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", height=height, width=width, count=data.shape[2],
                           dtype=data.dtype.name, crs=crs, transform=transform, nodata=value,
                           compress="deflate") as target:
            target.write(data.transpose(2, 0, 1))


def write_scenes(out: str | Path, scenes: int, size: int, seed: int = 0) -> list[str]:
    """``scenes`` pairs ``<out>/images/scene_NN.tif`` and ``<out>/labels/scene_NN.tif`` of ``size`` x ``size``
    pixels, side by side on the ground; returns their stems."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    stems = []
    for index in range(scenes):
        stem = f"scene_{index:02d}"
        image, label = make_scene(rng, size, size)
        origin = (500000.0 + index * size * PIXEL, 5000000.0)
        write_scene_pair(out / "images" / f"{stem}.tif", out / "labels" / f"{stem}.tif", image, label, origin)
        stems.append(stem)
    (out / "classes.txt").write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    return stems


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description="Write synthetic 4-band uint16 GeoTIFF scenes and labels in "
                                     "which only band 4 tells the classes apart.")
    parser.add_argument("--out", required=True, help="folder for images/, labels/ and classes.txt")
    parser.add_argument("--scenes", type=int, default=6, help="number of scenes (default: %(default)s)")
    parser.add_argument("--size", type=int, default=512, help="scene side in pixels (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    if args.scenes < 1 or args.size < 64:
        raise UserError(f"--scenes {args.scenes} --size {args.size}: give at least 1 scene of at least 64 pixels")
    out = Path(args.out)
    if (out / "images").exists() and any((out / "images").iterdir()):
        raise UserError(f"{out / 'images'} already holds files: choose another --out")
    stems = write_scenes(out, args.scenes, args.size, args.seed)
    print(f"wrote {len(stems)} scene(s) of {args.size}x{args.size} px to {out / 'images'} and {out / 'labels'}; "
          f"class names in {out / 'classes.txt'}")
    return 0


if __name__ == "__main__":
    run_cli(lambda argv: main(parse_args(argv)))
