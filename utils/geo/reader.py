"""Reading a scene: which of its bands feed the model, and a region's samples and valid mask, by rows of windows.

Bands: the spec's ``bands`` (1-based, GDAL order) when the model was trained on a selection; else
every band but a trailing alpha band; a one-band scene feeds an RGB model its band three times,
as grey photos are read. Samples keep their type (uint8, uint16, int16, float32; other types
are read as float32) and the :class:`~utils.inference.engine.Engine` normalises them from the spec.

Validity is :func:`utils.data.raster.valid_mask`, as for training images: GDAL's per-dataset mask
(a nodata value, an internal or sidecar ``.msk`` mask, or an alpha band), or only the nodata value
when the model reads the band GDAL flags as alpha (a 4-band model on a plain 4-band uint8 file).
Invalid samples are replaced by a neutral value before the network sees them (the band mean of the
spec, else the letterbox grey), so that a huge nodata value such as -3.4e38 cannot spill into its
valid neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from nets.spec import ModelSpec
from utils.data.raster import valid_mask
from utils.data.transforms import GREY
from utils.errors import UserError

SAMPLE_TYPES = ("uint8", "uint16", "int16", "float32")


@dataclass(frozen=True)
class SceneBands:
    """The bands read for the model (1-based, repeats allowed), their sample type and the fill of invalid pixels."""

    indexes: tuple[int, ...]
    dtype: np.dtype
    fill: np.ndarray  # (len(indexes),) of dtype


def choose_bands(dataset: DatasetReader, path: Path, spec: ModelSpec) -> SceneBands:
    """The bands of ``dataset`` the model of ``spec`` reads (module docstring); UserError naming the file when
    a band index is out of range or the band count does not match the model."""
    wanted = getattr(spec, "bands", None)
    channels = spec.in_channels
    if wanted:
        missing = [b for b in wanted if not 1 <= b <= dataset.count]
        if missing:
            raise UserError(f"{path}: band {missing[0]} is out of range: the scene has {dataset.count} band(s) "
                            f"(1..{dataset.count}) and the model reads bands {','.join(map(str, wanted))}")
        indexes = tuple(int(b) for b in wanted)
    else:
        colour = dataset.count - (1 if dataset.count > 1 and dataset.colorinterp[-1] == ColorInterp.alpha else 0)
        # A model of all the bands reads all of them: GDAL flags the 4th band of a plain 4-band uint8 file
        # (RGB + near infrared, say) as alpha.
        colour = dataset.count if dataset.count == channels else colour
        indexes = (1,) * 3 if colour == 1 and channels == 3 else tuple(range(1, colour + 1))
    if len(indexes) != channels:
        raise UserError(f"{path}: the scene has {len(indexes)} band(s) to read, the model takes {channels}: "
                        f"use a model trained on {len(indexes)}-band data (train.py --bands picks bands)")
    dtypes = {dataset.dtypes[i - 1] for i in indexes}
    only = dtypes.pop() if len(dtypes) == 1 else None
    dtype = np.dtype(only if only in SAMPLE_TYPES else "float32")
    mean = getattr(spec, "mean", None)
    fill = np.asarray(mean if mean else [GREY] * channels, dtype=np.float64)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        fill = np.clip(np.round(fill), info.min, info.max)
    return SceneBands(indexes, dtype, fill.astype(dtype))


def read_block(dataset: DatasetReader, path: Path, bands: SceneBands, rows: tuple[int, int],
               cols: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(samples (h, w, bands), valid (h, w) bool)`` of the region ``rows`` x ``cols``, invalid samples filled.

    Raises:
        UserError: naming the file, when a data block fails to decode (a damaged or truncated file).
    """
    window = Window(cols[0], rows[0], cols[1] - cols[0], rows[1] - rows[0])
    samples = np.empty((rows[1] - rows[0], cols[1] - cols[0], len(bands.indexes)), dtype=bands.dtype)
    try:
        for channel, index in enumerate(bands.indexes):
            # Band by band into the (h, w, C) array: no second copy of the region for the transpose.
            samples[:, :, channel] = dataset.read(index, window=window, out_dtype=bands.dtype)
        valid = valid_mask(dataset, samples, bands.indexes, window)
    except RasterioError as exc:
        cause = exc.__cause__ or exc  # GDAL's own message says which block failed
        raise UserError(f"{path}: cannot read the pixels of rows {rows[0]}..{rows[1]}, columns {cols[0]}..{cols[1]} "
                        f"({cause}); the file is damaged or truncated: re-export or re-download it") from None
    if valid is None:
        return samples, np.ones(samples.shape[:2], dtype=bool)
    if not valid.all():
        samples[~valid] = bands.fill
    return samples, valid


class StripRows:
    """The columns ``cols`` of a scene as :func:`~utils.inference.slide.slide_rows` reads them: one row of
    windows at a time.

    Indexing ``[rows, cols]`` with a window's slices reads the rows of that window across the strip
    (:func:`read_block`) when they are not the rows held already, so a row of windows is read once
    and only its samples are held. The valid masks of the rows read are kept until :meth:`valid`
    has handed them out, since the labels of a finished band are masked after later rows were read.
    """

    def __init__(self, dataset: DatasetReader, path: Path, bands: SceneBands, cols: tuple[int, int],
                 window_height: int) -> None:
        self.dataset, self.path, self.bands, self.cols = dataset, path, bands, cols
        self.window_height = window_height
        self.shape = (dataset.height, cols[1] - cols[0], len(bands.indexes))
        self.dtype = bands.dtype
        self._top = -1
        self._samples = np.empty((0, 0, len(bands.indexes)), dtype=bands.dtype)
        self._masks: dict[int, np.ndarray] = {}  # first row -> valid mask of the rows read from there

    def _read(self, top: int) -> None:
        if top != self._top:
            self._samples = np.empty(0, dtype=self.dtype)  # the old rows go before the new ones come
            stop = min(top + self.window_height, self.shape[0])
            self._samples, self._masks[top] = read_block(self.dataset, self.path, self.bands, (top, stop), self.cols)
            self._top = top

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        rows, cols = key
        self._read(rows.start)
        return self._samples[:rows.stop - rows.start, cols]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        """The whole region: what the sliding window pads when the scene is shorter or narrower than a window."""
        samples, _ = read_block(self.dataset, self.path, self.bands, (0, self.shape[0]), self.cols)
        return samples if dtype is None else samples.astype(dtype)

    def void(self, top: int, left: int, width: int) -> bool:
        """Whether the window at row ``top``, column ``left`` (in the strip) has no valid pixel."""
        self._read(top)
        return not self._masks[top][:, left:left + width].any()

    def valid(self, start: int, stop: int) -> np.ndarray:
        """The valid mask (rows, strip width) of rows ``start``..``stop``, which lie in rows read already;
        the masks of rows above ``start`` are dropped."""
        top = max(t for t in self._masks if t <= start)
        for old in [t for t in self._masks if t < top]:
            del self._masks[old]
        return self._masks[top][start - top:stop - top]
