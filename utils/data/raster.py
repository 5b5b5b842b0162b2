"""Reading rasters (TIFF/GeoTIFF and other GDAL formats) with rasterio: any band count, the file's own dtype.

:func:`read_raster` returns an (H, W, C) array in the file's dtype (uint8, uint16, int16 or
float32), with ``bands`` (1-based, GDAL order) selecting and ordering the channels, and
:func:`read_raster_valid` also its valid mask (nodata value, mask or alpha);
:func:`check_bands` validates a selection against a file's band count and :func:`parse_bands`
reads ``--bands 4,3,2``. :func:`read_image` is what the dataset, get_miou.py and predict.py call
for one image: rasters through rasterio, photos (JPEG, PNG, ...) through
:func:`utils.data.io.load_image` as 8-bit RGB, then the same band selection. Every problem with
a file (not a raster, data blocks that fail to decode, an unsupported dtype, a band out of
range) is a :class:`~utils.errors.UserError` naming it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.data.io import load_image
from utils.data.normalize import SUPPORTED_DTYPES, Normalization
from utils.errors import UserError

# Files read with rasterio; every other image extension is a photo (8-bit RGB through Pillow / OpenCV).
RASTER_EXTENSIONS = (".tif", ".tiff")


def is_raster(path: str | os.PathLike) -> bool:
    """True for files read with rasterio (TIFF / GeoTIFF), False for photos."""
    return Path(path).suffix.lower() in RASTER_EXTENSIONS


def parse_bands(text: str | None) -> tuple[int, ...] | None:
    """``--bands 4,3,2`` as ``(4, 3, 2)``; None stays None (all bands).

    Raises:
        UserError: naming the value, for anything but comma-separated integers of 1 or more.
    """
    if text is None:
        return None
    try:
        bands = tuple(int(part) for part in text.split(","))
    except ValueError:
        bands = ()
    if not bands or min(bands) < 1:
        raise UserError(f"--bands {text}: give 1-based band numbers separated by commas, as GDAL counts them, "
                        "e.g. --bands 4,3,2")
    return bands


def check_bands(count: int, bands: Sequence[int] | None, path: str | os.PathLike | None = None) -> tuple[int, ...]:
    """The 1-based bands to read from a file of ``count`` bands: ``bands``, or all of them when None.

    Raises:
        UserError: a band below 1 or above ``count`` (naming ``path`` when given).
    """
    if bands is None:
        return tuple(range(1, count + 1))
    bands = tuple(int(band) for band in bands)
    bad = [band for band in bands if not 1 <= band <= count]
    if bad or not bands:
        where = f"{path} has" if path is not None else "the raster has"
        raise UserError(f"band {', '.join(map(str, bad)) or '(none)'} out of range: {where} {count} band(s), "
                        f"numbered 1..{count}; fix --bands")
    return bands


@dataclass(frozen=True)
class RasterInfo:
    """A raster's header: band count, dtype name (``uint16``...), height and width."""

    count: int
    dtype: str
    height: int
    width: int


def _open(path: Path):
    # Imported here: rasterio takes half a second to import, which runs on photos alone never need.
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        if not path.exists():
            raise UserError(f"image {path} not found") from None
        raise UserError(f"cannot read raster {path} ({exc}); the file is damaged or not a raster: replace it "
                        "or remove it from the split files") from None


def raster_info(path: str | os.PathLike) -> RasterInfo:
    """The header of a raster (nothing decoded); UserError for a file that does not open or has mixed dtypes."""
    path = Path(path)
    with _open(path) as source:
        dtypes = set(source.dtypes)
        if len(dtypes) != 1:
            raise UserError(f"raster {path} mixes band dtypes ({', '.join(sorted(dtypes))}); convert it to one "
                            f"of {', '.join(SUPPORTED_DTYPES)}")
        return RasterInfo(source.count, dtypes.pop(), source.height, source.width)


def image_info(path: str | os.PathLike) -> RasterInfo:
    """Band count, dtype and size of an image as :func:`read_image` returns it (photos: 3 bands uint8)."""
    if is_raster(path):
        return raster_info(path)
    from PIL import Image, UnidentifiedImageError

    from utils.data.io import exif_orientation

    try:
        with Image.open(path) as image:
            width, height = image.size
            if exif_orientation(image) in (5, 6, 7, 8):  # rotated by 90 degrees: width and height swap
                width, height = height, width
    except FileNotFoundError:
        raise UserError(f"image {path} not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"cannot read image {path} ({exc}); replace it or remove '{Path(path).stem}' from the "
                        "split file") from None
    return RasterInfo(3, "uint8", height, width)


def read_raster(path: str | os.PathLike, bands: Sequence[int] | None = None) -> np.ndarray:
    """An (H, W, C) array of the raster's ``bands`` (1-based; None: all) in the file's dtype.

    Raises:
        UserError: as :func:`read_raster_valid`.
    """
    return read_raster_valid(path, bands)[0]


def read_raster_valid(path: str | os.PathLike,
                      bands: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(samples, valid): the (H, W, C) array of :func:`read_raster` and GDAL's dataset mask as (H, W) bool
    (a nodata value, an internal or sidecar mask, or an alpha band), or None when every pixel is valid.

    Raises:
        UserError: naming the file, when it does not open, a data block fails to decode, its dtype is
            not one of uint8, uint16, int16, float32, or a band is out of range.
    """
    from rasterio.errors import RasterioError

    path = Path(path)
    with _open(path) as source:
        dtype = source.dtypes[0]
        if any(d != dtype for d in source.dtypes) or dtype not in SUPPORTED_DTYPES:
            raise UserError(f"raster {path} holds {', '.join(sorted(set(source.dtypes)))} bands; the toolkit "
                            f"reads {', '.join(SUPPORTED_DTYPES)}: convert it (e.g. gdal_translate -ot UInt16)")
        selected = check_bands(source.count, bands, path)
        try:
            samples = np.ascontiguousarray(source.read(list(selected)).transpose(1, 2, 0))
            valid = valid_mask(source, samples, selected)
        except RasterioError as exc:
            raise UserError(f"cannot decode raster {path} ({exc}); its data is damaged: replace it or remove it "
                            "from the split files") from None
    return samples, None if valid is None or valid.all() else valid


def valid_mask(source, samples: np.ndarray, indexes: Sequence[int], window=None) -> np.ndarray | None:
    """Which pixels of ``samples`` (H, W, C), read from the bands ``indexes`` of the open rasterio ``source``
    (in ``window``, None: whole), are valid, as (H, W) bool; None when the file marks no pixel invalid.

    GDAL's dataset mask (a nodata value, an internal or sidecar mask, or an alpha band), except when a
    band GDAL flags as alpha is read as data (a plain 4-band uint8 file of RGB + near infrared): then
    only the nodata value counts.
    """
    from rasterio.enums import ColorInterp, MaskFlags

    nodata = source.nodata
    if any(source.colorinterp[i - 1] == ColorInterp.alpha for i in indexes):
        return None if nodata is None else ~(samples == np.asarray(nodata, dtype=samples.dtype)).all(-1)
    if nodata is None and all(MaskFlags.all_valid in flags for flags in source.mask_flag_enums):
        return None
    return source.dataset_mask(window=window) > 0


def read_image(path: str | os.PathLike, bands: Sequence[int] | None = None,
               normalization: Normalization | None = None) -> np.ndarray:
    """One image as (H, W, C): a raster's ``bands`` in its dtype, or a photo as 8-bit RGB (``bands`` then
    select among R, G, B = 1, 2, 3).

    With ``normalization``, a raster's invalid samples (its nodata value, mask or alpha) become its
    :meth:`~utils.data.normalize.Normalization.fill` (the band mean), as predict.py fills a scene's, so
    that a nodata value such as 0 or -3.4e38 never reaches the network.
    """
    if is_raster(path):
        samples, valid = read_raster_valid(path, bands)
        if normalization is not None and valid is not None:
            samples[~valid] = normalization.fill(samples.shape[2], samples.dtype)
        return samples
    image = load_image(path)
    if bands is None:
        return image
    return np.ascontiguousarray(image[:, :, [band - 1 for band in check_bands(3, bands, path)]])


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An 8-bit RGB picture of an (H, W, C) image for people: 8-bit RGB as it is; otherwise its first three
    channels (one channel as grey), each stretched from its 2nd to its 98th percentile."""
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return image
    channels = image[:, :, :3] if image.shape[2] >= 3 else np.repeat(image[:, :, :1], 3, axis=2)
    values = channels.astype(np.float32)
    low, high = np.percentile(values.reshape(-1, 3), [2, 98], axis=0)
    scaled = (values - low) / np.maximum(high - low, 1e-6)
    return np.clip(scaled * 255 + 0.5, 0, 255).astype(np.uint8)
