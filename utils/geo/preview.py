"""The PNG preview of a class raster: its colours, at most :data:`PREVIEW_SIDE` pixels a side, nodata transparent.

The preview is read from the written GeoTIFF with a decimated read (nearest neighbour), which
GDAL serves from the overviews :func:`utils.geo.writer.build_overviews` built: the scene is never
read whole at full resolution.
"""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import rasterio
from rasterio.enums import Resampling

from utils.errors import UserError
from utils.geo.writer import NODATA

PREVIEW_SIDE = 1024


def preview_shape(height: int, width: int, side: int = PREVIEW_SIDE) -> tuple[int, int]:
    """(h, w) of the preview of a ``height`` x ``width`` raster: the same when it fits in ``side``, else
    shrunk by the smallest integer factor that makes it fit."""
    factor = max(1, math.ceil(max(height, width) / side))
    return math.ceil(height / factor), math.ceil(width / factor)


def read_decimated(path: Path, side: int) -> tuple[np.ndarray, rasterio.Affine, object]:
    """(band 1 of the raster at ``path`` decimated to fit ``side``, the transform of those pixels, the CRS)."""
    with rasterio.open(path) as dataset:
        shape = preview_shape(dataset.height, dataset.width, side)
        values = dataset.read(1, out_shape=shape, resampling=Resampling.nearest)
        transform = dataset.transform @ rasterio.Affine.scale(dataset.width / shape[1], dataset.height / shape[0])
        return values, transform, dataset.crs


def write_preview(classes: Path, target: Path, palette: np.ndarray, side: int = PREVIEW_SIDE) -> None:
    """The preview PNG of the class raster ``classes`` at ``target`` (RGBA; nodata transparent)."""
    labels, _, _ = read_decimated(classes, side)
    colours = np.zeros((256, 4), dtype=np.uint8)
    colours[:len(palette), :3] = palette
    colours[:len(palette), 3] = 255
    colours[NODATA] = 0
    rgba = colours[labels]
    if not cv2.imwrite(str(target), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA)):
        raise UserError(f"cannot write {target}: check that the folder is writable")
