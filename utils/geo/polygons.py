"""The class regions of a class raster as GeoJSON: one polygon feature per connected region, in WGS84.

The regions are traced (:func:`rasterio.features.shapes`, 4-connected) on one bounded read of the
class raster: the raster itself up to :data:`POLYGON_SIDE` pixels a side, else a decimated
(nearest-neighbour) read from its overviews that fits. Tracing windows one by one would cut every
region that crosses a window border in two; the bounded read keeps regions whole at the cost of
detail on very large scenes (a 16000-pixel scene is traced at a quarter of its resolution).
Nodata pixels (255) belong to no feature. Coordinates are reprojected from the scene's CRS to
WGS84 longitude/latitude (:func:`rasterio.warp.transform_geom`), as RFC 7946 requires.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError
from rasterio.features import shapes
from rasterio.warp import transform_geom

from utils.errors import UserError
from utils.geo.preview import read_decimated
from utils.geo.writer import NODATA

POLYGON_SIDE = 4096
WGS84 = "EPSG:4326"


def check_crs(crs: object, source: Path) -> None:
    """UserError naming ``source`` when it has no CRS: WGS84 coordinates cannot be computed without one."""
    if crs is None:
        raise UserError(f"{source}: the scene has no CRS, so --polygons cannot place its regions in WGS84 "
                        "(RFC 7946): assign one (gdal_edit.py -a_srs EPSG:...) or drop --polygons")


def write_polygons(classes: Path, target: Path, class_names: Sequence[str], source: Path,
                   side: int = POLYGON_SIDE) -> int:
    """Write the GeoJSON FeatureCollection of the class raster ``classes`` (which has a CRS) at ``target``;
    returns the feature count. UserError naming ``source`` when a region cannot be reprojected."""
    labels, transform, crs = read_decimated(classes, side)
    features = []
    # Partial reprojection drops the vertices WGS84 cannot hold (a geostationary scene's limb).
    with rasterio.Env(OGR_ENABLE_PARTIAL_REPROJECTION=True):
        for geometry, value in shapes(labels, mask=labels != NODATA, connectivity=4, transform=transform):
            class_id = int(value)
            try:
                geometry = transform_geom(crs, WGS84, geometry, precision=7)
            except RasterioError as exc:
                raise UserError(f"{source}: a class region cannot be reprojected to WGS84 for --polygons "
                                f"({exc.__cause__ or exc}): drop --polygons for this scene") from None
            features.append({"type": "Feature",
                             "properties": {"class_id": class_id, "class_name": class_names[class_id]},
                             "geometry": geometry})
    with target.open("w", encoding="utf-8") as handle:
        json.dump({"type": "FeatureCollection", "features": features}, handle)
    return len(features)
