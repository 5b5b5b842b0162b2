"""Predict one raster scene strip by strip into GeoTIFFs, with memory bounded by a strip's width, not the scene.

For each column strip of :func:`utils.geo.strips.plan_strips` (left to right): read its region one
row of windows at a time (:class:`utils.geo.reader.StripRows`), run the scene windows that touch
its core through the predictor's sliding-window strategy (:func:`utils.inference.slide.slide_rows`)
at native resolution, and write each finished band of the core's labels (255 where the input is
invalid) and, with ``save_prob``, its probabilities. Windows with no valid pixel skip the network.
Then the overviews, the preview and the polygons are made from the written class raster, and every
output is renamed into place at once (:func:`utils.geo.writer.staged`). Like mmsegmentation's
remote-sensing inferencer, the scene is read through GDAL windows and never held whole.
"""

from __future__ import annotations

import sys
import warnings
from bisect import bisect_left
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from tqdm import tqdm

from utils.errors import UserError
from utils.geo.polygons import check_crs, write_polygons
from utils.geo.preview import PREVIEW_SIDE, write_preview
from utils.geo.reader import SceneBands, StripRows, choose_bands
from utils.geo.strips import Strip, plan_strips, strip_width
from utils.geo.writer import NODATA, build_overviews, check_not_input, open_classes, open_prob, staged
from utils.inference.outputs import quantize_prob
from utils.inference.postprocess import labels_and_prob
from utils.inference.predictor import Predictor
from utils.inference.slide import slide_rows, strides, window_starts
from utils.inference.visualize import make_palette

# GDAL's block cache (MiB): its default, 5% of the RAM, would let the cache alone outgrow a strip.
GDAL_CACHE_MB = 64


@dataclass(frozen=True)
class SceneOptions:
    """What :func:`predict_scene` writes besides ``<stem>.tif`` and how it tiles the scene.

    Args:
        save_prob: also write ``<stem>_prob.tif`` (foreground probability, or the chosen class's).
        prob_bits: 8 (uint8 0..255) or 16 (uint16 0..65535) probability levels.
        polygons: also write ``<stem>.geojson`` (needs a CRS).
        preview_side: the preview PNG's longest side at most.
        strip: the width of a strip's core in pixels (None: :func:`utils.geo.strips.strip_width`).
        batch_size: windows per forward pass (None: the predictor's on a GPU, 1 on a CPU, where a batch
            of windows is no faster and each window in it adds about 100 MiB to the peak memory).
        progress: a progress bar over the scene's windows.
    """

    save_prob: bool = False
    prob_bits: int = 8
    polygons: bool = False
    preview_side: int = PREVIEW_SIDE
    strip: int | None = None
    batch_size: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.prob_bits not in (8, 16):
            raise ValueError(f"prob_bits must be 8 or 16; got {self.prob_bits}")
        if self.strip is not None and self.strip < 1:
            raise ValueError(f"strip must be at least 1 pixel wide; got {self.strip}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {self.batch_size}")


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


def _predict_strip(predictor: Predictor, rows: StripRows, strip: Strip, ys: list[int], overlap: float,
                   ) -> Iterator[tuple[int, np.ndarray, np.ndarray, torch.Tensor]]:
    """``(first_row, labels, valid, prob)`` of the strip's core, band by band top to bottom: labels uint8
    (255 where invalid), the valid mask, and the probability map of :func:`labels_and_prob`."""
    left = strip.core_cols[0] - strip.region_cols[0]
    width = strip.core_cols[1] - strip.core_cols[0]
    win_w = predictor.input_size[1]

    def void(y: int, x: int) -> bool:
        return rows.void(y, x, win_w)

    for start, band in slide_rows(predictor.engine, rows, overlap, progress=False, starts=(ys, strip.xs),
                                  skip=void):
        labels, prob = labels_and_prob(band[:, :, left:left + width], predictor.engine.threshold)
        labels = labels.cpu().numpy()
        valid = rows.valid(start, start + labels.shape[0])[:, left:left + width]
        labels[~valid] = NODATA
        yield start, labels, valid, prob


def predict_scene(predictor: Predictor, source: Path, target: Path, options: SceneOptions | None = None) -> SceneResult:
    """Predict the scene ``source`` into ``target`` (``<stem>.tif``) and the other outputs of ``options``.

    Windows have the predictor's input size and overlap (its ``slide`` options); the scene is read
    at native resolution. Nothing is left at the targets unless every output was written.

    Raises:
        UserError: naming the file, for a band the scene lacks, a band count the model does not take,
            a data block that fails to decode, ``--polygons`` without a CRS, or an output onto the input.
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
        width = options.strip or strip_width(predictor.engine.channels or predictor.num_classes,
                                             len(bands.indexes), bands.dtype.itemsize, window)
        stride = strides(window, slide.overlap)
        ys = window_starts(max(dataset.height, window[0]), window[0], stride[0])
        strips = plan_strips(dataset.width, window[1], stride[1], width)
        temps = stack.enter_context(staged(targets))
        with ExitStack() as outputs:
            classes = outputs.enter_context(open_classes(temps[0], dataset, palette))
            prob = outputs.enter_context(open_prob(temps[2], dataset, options.prob_bits)) if options.save_prob else None
            bar = outputs.enter_context(tqdm(total=len(ys) * sum(len(s.xs) for s in strips), unit="window",
                                             leave=False, file=sys.stderr, desc=source.name,
                                             disable=None if options.progress else True))
            engine = predictor.engine
            stack.callback(setattr, engine, "batch_size", engine.batch_size)
            engine.batch_size = options.batch_size or (1 if engine.device.type == "cpu" else engine.batch_size)
            for strip in strips:
                rows = StripRows(dataset, source, bands, strip.region_cols, window[0])
                done = 0
                for start, labels, valid, band_prob in _predict_strip(predictor, rows, strip, ys, slide.overlap):
                    out_window = Window(strip.core_cols[0], start, labels.shape[1], labels.shape[0])
                    classes.write(labels, 1, window=out_window)
                    if prob is not None:
                        prob.write(quantize_prob(band_prob, options.prob_bits), 1, window=out_window)
                        prob.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=out_window)
                    counts += np.bincount(labels[valid], minlength=predictor.num_classes)[:len(counts)]
                    # Windows run so far: those of the rows of windows that start above the band's end.
                    ran = bisect_left(ys, start + labels.shape[0]) * len(strip.xs)
                    bar.update(ran - done)
                    done = ran
                bar.update(len(ys) * len(strip.xs) - done)
            build_overviews(classes)
        write_preview(temps[0], temps[1], palette, options.preview_side)
        if options.polygons:
            write_polygons(temps[0], temps[-1], predictor.class_names, source)
    return SceneResult(written=targets, counts=counts)
