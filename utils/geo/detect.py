"""Which inputs are raster scenes (predicted strip by strip into GeoTIFFs) and which are photos.

A TIFF is a **scene** when GDAL (through rasterio) opens it and any of these holds:

- it is georeferenced: it has a CRS, a geotransform other than the identity, or ground control
  points (an 8-bit RGB GeoTIFF is a scene: letterboxing it as a photo would lose its geometry);
- its samples are not 8-bit (uint16, int16, float32 ...);
- its bands are not those of a photo: 1 (grey) or 3 (RGB), each optionally followed by an alpha band;
- it is bigger than a photo: more than :data:`PHOTO_MAX_PIXELS` pixels.

Everything else (PNG, JPEG, plain 8-bit RGB TIFFs of photo size) stays a photo, read whole and
letterboxed or slid over as before. A TIFF that GDAL cannot open is left to the photo reader,
whose error names the file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioError

# Only these extensions are probed; they are also in utils.data.io.IMAGE_EXTENSIONS, so folder runs find them.
SCENE_EXTENSIONS = (".tif", ".tiff")
# Above this many pixels a TIFF is a scene even when it looks like a photo (a 50 MP camera frame is not one).
PHOTO_MAX_PIXELS = 64_000_000


def is_scene(path: str | Path) -> bool:
    """Whether ``path`` is a raster scene by the rule of the module docstring."""
    path = Path(path)
    if path.suffix.lower() not in SCENE_EXTENSIONS:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                georeferenced = (dataset.crs is not None or not dataset.transform.is_identity
                                 or bool(dataset.gcps[0]))
                interp = dataset.colorinterp
                colour = dataset.count - (1 if interp and interp[-1] == ColorInterp.alpha else 0)
                return (georeferenced or any(dtype != "uint8" for dtype in dataset.dtypes)
                        or colour not in (1, 3) or dataset.width * dataset.height > PHOTO_MAX_PIXELS)
    except RasterioError:
        return False
