"""Predict one raster scene block by block into GeoTIFFs, with memory bounded by the block, not the scene.

For each block of :func:`utils.geo.blocks.plan_blocks` (row by row): read its region's samples and
valid mask (:mod:`utils.geo.reader`), run the scene windows that touch its core through the
predictor's sliding-window strategy (:func:`utils.inference.slide.slide_rows`) at native
resolution, and write the core's labels (255 where the input is invalid) and, with ``save_prob``,
its probabilities. Blocks whose core holds no valid pixel skip the network. Then the overviews,
the preview and the polygons are made from the written class raster, and every output is renamed
into place at once (:func:`utils.geo.writer.staged`). Like mmsegmentation's remote-sensing
inferencer, the scene is read through GDAL windows and never held whole.
"""

from __future__ import annotations

import sys
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from tqdm import tqdm

from utils.errors import UserError
from utils.geo.blocks import Block, block_side, plan_blocks
from utils.geo.polygons import check_crs, write_polygons
from utils.geo.preview import PREVIEW_SIDE, write_preview
from utils.geo.reader import SceneBands, choose_bands, read_block
from utils.geo.writer import NODATA, build_overviews, check_not_input, open_classes, open_prob, staged
from utils.inference.outputs import quantize_prob
from utils.inference.postprocess import labels_and_prob
from utils.inference.predictor import Predictor
from utils.inference.slide import slide_rows, strides
from utils.inference.visualize import make_palette

# GDAL's block cache (MiB): its default, 5% of the RAM, would let the cache alone outgrow a block.
GDAL_CACHE_MB = 64


@dataclass(frozen=True)
class SceneOptions:
    """What :func:`predict_scene` writes besides ``<stem>.tif`` and how it tiles the scene.

    Args:
        save_prob: also write ``<stem>_prob.tif`` (foreground probability, or the chosen class's).
        prob_bits: 8 (uint8 0..255) or 16 (uint16 0..65535) probability levels.
        polygons: also write ``<stem>.geojson`` (needs a CRS).
        preview_side: the preview PNG's longest side at most.
        block: the side of a block's core in pixels (None: :func:`utils.geo.blocks.block_side`).
        progress: a progress bar over the scene's windows.
    """

    save_prob: bool = False
    prob_bits: int = 8
    polygons: bool = False
    preview_side: int = PREVIEW_SIDE
    block: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.prob_bits not in (8, 16):
            raise ValueError(f"prob_bits must be 8 or 16; got {self.prob_bits}")
        if self.block is not None and self.block < 1:
            raise ValueError(f"block must be at least 1 pixel; got {self.block}")


@dataclass
class SceneResult:
    """The outputs written for a scene and its per-class counts of valid pixels."""

    written: list[Path] = field(default_factory=list)
    counts: np.ndarray | None = None


def scene_targets(target: Path, options: SceneOptions) -> list[Path]:
    """The outputs of a scene whose class raster is ``target`` (``<stem>.tif``), class raster first."""
    stem = target.stem  # "RGB2.byte" of "RGB2.byte.tif": only the last suffix goes
    names = [f"{stem}.tif", f"{stem}_preview.png"]
    if options.save_prob:
        names.append(f"{stem}_prob.tif")
    if options.polygons:
        names.append(f"{stem}.geojson")
    return [target.with_name(name) for name in names]


def _predict_block(predictor: Predictor, samples: np.ndarray, valid: np.ndarray, block: Block, overlap: float,
                   prob_bits: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels (255 where invalid) and probability levels (or None) of the block's core."""
    top, left = block.core_rows[0] - block.region_rows[0], block.core_cols[0] - block.region_cols[0]
    height, width = block.core_rows[1] - block.core_rows[0], block.core_cols[1] - block.core_cols[0]
    labels = np.full((height, width), NODATA, dtype=np.uint8)
    levels = None if prob_bits is None else np.zeros((height, width), dtype=np.uint8 if prob_bits == 8 else np.uint16)
    core_valid = valid[top:top + height, left:left + width]
    if not core_valid.any():
        return labels, levels
    engine = predictor.engine
    for start, band in slide_rows(engine, samples, overlap, progress=False, starts=(block.ys, block.xs)):
        first, stop = max(start, top), min(start + band.shape[1], top + height)
        if first >= stop:
            continue
        band_labels, band_prob = labels_and_prob(band[:, first - start:stop - start, left:left + width],
                                                 engine.threshold)
        labels[first - top:stop - top] = band_labels.cpu().numpy()
        if levels is not None:
            levels[first - top:stop - top] = quantize_prob(band_prob, prob_bits)
    labels[~core_valid] = NODATA
    return labels, levels


def predict_scene(predictor: Predictor, source: Path, target: Path, options: SceneOptions | None = None) -> SceneResult:
    """Predict the scene ``source`` into ``target`` (``<stem>.tif``) and the other outputs of ``options``.

    Windows have the predictor's input size and overlap (its ``slide`` options); the scene is read
    at native resolution. Nothing is left at the targets unless every output was written.

    Raises:
        UserError: naming the file, for a band the scene lacks, a band count the model does not take,
            a block that fails to decode, ``--polygons`` without a CRS, or an output onto the input.
    """
    options = options or SceneOptions()
    slide = predictor.options.slide
    if predictor.options.tta:
        raise UserError(f"{source}: --tta is not available for raster scenes (predicted with sliding windows)")
    if slide.scale != 1:
        raise UserError(f"{source}: raster scenes are predicted at native resolution: drop --scale")
    targets = scene_targets(target, options)
    check_not_input(targets, source)
    palette = make_palette(predictor.num_classes)
    counts = np.zeros(predictor.num_classes, dtype=np.int64)
    with ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        dataset = stack.enter_context(rasterio.open(source))
        bands: SceneBands = choose_bands(dataset, source, predictor.spec)
        if options.polygons:
            check_crs(dataset.crs, source)
        window = predictor.input_size
        side = options.block or block_side(len(bands.indexes), bands.dtype.itemsize, window)
        blocks = plan_blocks(dataset.height, dataset.width, window, strides(window, slide.overlap), side)
        temps = stack.enter_context(staged(targets))
        with ExitStack() as outputs:
            classes = outputs.enter_context(open_classes(temps[0], dataset, palette))
            prob = outputs.enter_context(open_prob(temps[2], dataset, options.prob_bits)) if options.save_prob else None
            bar = outputs.enter_context(tqdm(total=sum(b.windows for b in blocks), unit="window", leave=False,
                                             file=sys.stderr, desc=source.name,
                                             disable=None if options.progress else True))
            for block in blocks:
                samples, valid = read_block(dataset, source, bands, block.region_rows, block.region_cols)
                labels, levels = _predict_block(predictor, samples, valid, block, slide.overlap,
                                                options.prob_bits if prob is not None else None)
                del samples
                out_window = Window(block.core_cols[0], block.core_rows[0], labels.shape[1], labels.shape[0])
                classes.write(labels, 1, window=out_window)
                if prob is not None:
                    prob.write(levels, 1, window=out_window)
                    prob.write_mask(np.where(labels != NODATA, 255, 0).astype(np.uint8), window=out_window)
                counts += np.bincount(labels[labels != NODATA], minlength=predictor.num_classes)[:len(counts)]
                bar.update(block.windows)
            build_overviews(classes)
        write_preview(temps[0], temps[1], palette, options.preview_side)
        if options.polygons:
            write_polygons(temps[0], temps[-1], predictor.class_names, source)
    return SceneResult(written=targets, counts=counts)
