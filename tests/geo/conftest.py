"""Fixtures of the raster-scene tests: georeferenced scenes written with rasterio, and small models."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from bench.common import vary_batchnorm
from nets.spec import ModelSpec, build_model
from utils.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

UTM = "EPSG:32633"
TRANSFORM = from_origin(500000.0, 4600000.0, 10.0, 10.0)


def smooth_bands(count: int, height: int, width: int, seed: int = 0, dtype: str = "uint8",
                 top: int = 255) -> np.ndarray:
    """(count, height, width) samples with structure a network reacts to (blurred noise, 0..top)."""
    rng = np.random.default_rng(seed)
    noise = rng.random((count, height, width)).astype(np.float32)
    bands = np.stack([cv2.GaussianBlur(band, (0, 0), 4) for band in noise])
    bands = (bands - bands.min()) / max(float(bands.max() - bands.min()), 1e-6)
    return np.round(bands * top).astype(dtype)


def write_scene(path: Path, samples: np.ndarray, *, crs: str | None = UTM, transform=TRANSFORM,
                nodata: float | None = None, mask: np.ndarray | None = None, alpha: bool = False,
                tiled: bool = False, photometric: str | None = None) -> Path:
    """Write (C, H, W) ``samples`` as a GeoTIFF; ``mask`` (H, W) bool valid pixels as an internal mask;
    ``alpha``: the last band is an alpha band."""
    count, height, width = samples.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": samples.dtype.name,
               "crs": crs, "transform": transform, "nodata": nodata}
    if photometric:
        profile["photometric"] = photometric
    if alpha:
        profile["photometric"] = "RGB"
        profile["alpha"] = "YES"
    if tiled:
        profile.update(tiled=True, blockxsize=64, blockysize=64, compress="deflate")
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dataset:
        dataset.write(samples)
        if mask is not None:
            dataset.write_mask(np.where(mask, 255, 0).astype(np.uint8))
    return path


def lively_model(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    """A random DeepLab of ``spec`` whose outputs vary over an image (zero head bias, varied BatchNorm)."""
    torch.manual_seed(seed)
    model = build_model(spec, init="pytorch").eval()
    with torch.no_grad():
        model.cls_conv.bias.zero_()
        vary_batchnorm(model)
    return model


def save_model(model: torch.nn.Module, spec: ModelSpec, path: Path) -> Path:
    save_checkpoint({"model": model.state_dict(), "spec": spec.to_dict(), "epoch": 1, "format": CHECKPOINT_FORMAT},
                    path)
    return path


@pytest.fixture(scope="session")
def scene_models(tmp_path_factory):
    """A 3-class and a binary MobileNet DeepLab with 64x64 windows: ``{"multi": (model, spec, path),
    "binary": (...)}``; read-only."""
    folder = tmp_path_factory.mktemp("scene_models")
    out = {}
    for name, spec in (("multi", ModelSpec(num_classes=3, class_names=["background", "field", "water"],
                                           input_size=(64, 64))),
                       ("binary", ModelSpec(num_classes=2, task="binary", class_names=["background", "roof"],
                                            input_size=(64, 64)))):
        model = lively_model(spec)
        out[name] = (model, spec, save_model(model, spec, folder / f"{name}.pth"))
    return out
