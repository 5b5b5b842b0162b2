"""Raster scenes: georeferenced or multi-band images larger than memory, predicted strip by strip.

- :mod:`utils.geo.detect`: which inputs are scenes rather than photos (the rule).
- :mod:`utils.geo.reader`: opening a scene, choosing its bands, reading a strip a row of windows at a time.
- :mod:`utils.geo.strips`: the scene's sliding-window grid cut into column strips of bounded width.
- :mod:`utils.geo.writer`: tiled, compressed GeoTIFF outputs written under a temporary name.
- :mod:`utils.geo.scene`: the windowed loop that predicts one scene into its GeoTIFFs.
- :mod:`utils.geo.preview`: the small PNG preview, read from the written GeoTIFF's overviews.
- :mod:`utils.geo.polygons`: the class regions as GeoJSON polygons in WGS84.
- :mod:`utils.geo.run`: predict.py's loop over the scenes of a run, failures recorded per scene.
"""
