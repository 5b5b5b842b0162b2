"""The scene's GeoTIFF outputs: tiled, deflate-compressed, with the input's CRS and transform, staged under
temporary names and renamed into place only once every output of the scene is complete.

- the class raster: one uint8 band of class ids, nodata 255, the class palette as its colour table
  (255 transparent), overviews (nearest) for quick display and the preview;
- the probability raster: one band of grey levels (uint8 0..255 or uint16 0..65535), invalid pixels
  in its internal mask.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.io import DatasetReader, DatasetWriter

from utils.data.io import IGNORE_INDEX
from utils.errors import UserError
from utils.geo.strips import TILE

NODATA = IGNORE_INDEX
OVERVIEW_MIN_SIDE = 256


def _profile(source: DatasetReader, dtype: str) -> dict:
    """Creation options of a one-band output on the grid of ``source``."""
    return {"driver": "GTiff", "width": source.width, "height": source.height, "count": 1, "dtype": dtype,
            "crs": source.crs, "transform": source.transform, "tiled": True, "blockxsize": TILE,
            "blockysize": TILE, "compress": "deflate", "BIGTIFF": "IF_SAFER"}


def open_classes(path: Path, source: DatasetReader, palette: np.ndarray) -> DatasetWriter:
    """A new class raster at ``path`` on the grid of ``source``, its colour table set from ``palette`` (N, 3)."""
    dataset = rasterio.open(path, "w", **_profile(source, "uint8"), nodata=NODATA)
    table = {index: (int(r), int(g), int(b), 255) for index, (r, g, b) in enumerate(palette)}
    table[NODATA] = (0, 0, 0, 0)
    dataset.write_colormap(1, table)
    return dataset


def open_prob(path: Path, source: DatasetReader, bits: int) -> DatasetWriter:
    """A new probability raster (uint8 or uint16 grey levels) at ``path`` on the grid of ``source``."""
    return rasterio.open(path, "w", **_profile(source, "uint8" if bits == 8 else "uint16"))


def build_overviews(dataset: DatasetWriter) -> None:
    """Nearest-neighbour overviews, halving until the smaller side is below :data:`OVERVIEW_MIN_SIDE`."""
    factors, factor = [], 2
    while min(dataset.width, dataset.height) // factor >= OVERVIEW_MIN_SIDE:
        factors.append(factor)
        factor *= 2
    if factors:
        dataset.build_overviews(factors, Resampling.nearest)


def check_not_input(targets: list[Path], source: Path) -> None:
    """UserError when an output would replace the input scene itself."""
    for target in targets:
        if target.resolve() == source.resolve():
            raise UserError(f"refusing to overwrite the input {source} with an output: choose another --out")


@contextmanager
def staged(targets: list[Path]) -> Iterator[list[Path]]:
    """Temporary paths beside ``targets``; renamed onto them when the block exits cleanly, removed otherwise."""
    # The suffix stays last: writers choose the format by it.
    temps = [target.with_name(f".{target.stem}.{os.getpid()}.partial{target.suffix}") for target in targets]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as cleanup:
        for temp in temps:  # after a clean exit they are gone already
            cleanup.callback(temp.unlink, missing_ok=True)
        yield temps
        for temp, target in zip(temps, targets, strict=True):
            if temp.exists():
                os.replace(temp, target)
