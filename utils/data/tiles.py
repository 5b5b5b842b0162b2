"""Cutting image/label scene pairs into training tiles in the VOC layout (``voc_annotation.py --from-rasters``).

Each image scene (GeoTIFF, any bands and dtype) in the images folder is paired with the label
scene of the same stem (``.tif``/``.tiff``/``.png``, one band of class indices), which must have
its size, transform and CRS (a label with no georeferencing at all is taken to share its
image's). Tiles of ``tile`` pixels are read window by window, so a scene never has to fit in
memory, and written as ``JPEGImages/<scene>_<row>_<col>.tif`` (a GeoTIFF keeping the scene's CRS,
with the transform of its window, bands and dtype unchanged) and ``SegmentationClass/<same>.png``
(the usual palette PNG of class indices). Pixels where the image is nodata (nodata value,
internal mask or alpha) are labelled 255 (ignore); a tile that is all nodata, or all ignored, is
skipped.

The split never separates overlapping neighbours, as in the ISPRS Potsdam/Vaihingen convention:

- with at least :data:`MIN_SCENES_FOR_SCENE_SPLIT` scenes, whole scenes go to val (a seeded
  draw of ``val_fraction`` of them, at least one);
- with fewer, each scene's bottom rows (``val_fraction`` of its height, whole tiles, at least
  one) are its val block and the train tiles are cut from the rows above only.

Train tiles step by ``stride`` (the last one moved back to touch the edge); val tiles step by
``tile``, so they never overlap and each val pixel is scored once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils.data.io import IGNORE_INDEX, save_label
from utils.data.raster import RASTER_EXTENSIONS
from utils.errors import UserError

# From this many scenes on, val is made of whole scenes; below, of a block of each scene.
MIN_SCENES_FOR_SCENE_SPLIT = 5
LABEL_EXTENSIONS = (*RASTER_EXTENSIONS, ".png")


@dataclass(frozen=True)
class TileOptions:
    """Tile side and train stride in pixels (stride None: the tile side), the share of val, the seed of the
    scene draw, and whether existing output folders may be written into.

    Raises:
        ValueError: a tile below 16 pixels, a stride outside 1..tile, or a val share outside (0, 1).
    """

    tile: int = 512
    stride: int | None = None
    val_fraction: float = 0.1
    seed: int = 0
    force: bool = False

    def __post_init__(self) -> None:
        if self.tile < 16:
            raise ValueError(f"tile {self.tile}: must be at least 16 pixels")
        if self.stride is not None and not 1 <= self.stride <= self.tile:
            raise ValueError(f"stride {self.stride}: must lie in 1..{self.tile} (the tile side)")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val share {self.val_fraction}: must lie strictly between 0 and 1")

    @property
    def train_stride(self) -> int:
        return self.stride or self.tile


@dataclass
class TileResult:
    """What :func:`tile_scenes` wrote: tiles per split, how the split was made, skipped tiles, notes."""

    scenes: int = 0
    split_by: str = "scene"
    tiles: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    skipped_nodata: int = 0
    skipped_ignored: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ScenePair:
    stem: str
    image: Path
    label: Path


def find_scene_pairs(images: str | os.PathLike, labels: str | os.PathLike) -> list[ScenePair]:
    """Image scenes (``.tif``/``.tiff``) of ``images`` paired by stem with a label of ``labels``, sorted.

    Raises:
        UserError: a folder is missing, holds no scene, or a scene has no label.
    """
    images, labels = Path(images), Path(labels)
    for folder, what in ((images, "image"), (labels, "label")):
        if not folder.is_dir():
            raise UserError(f"--from-rasters: {what} folder {folder} not found")
    scenes = sorted(p for p in images.iterdir() if p.is_file() and p.suffix.lower() in RASTER_EXTENSIONS)
    if not scenes:
        raise UserError(f"--from-rasters: {images} holds no scene ({', '.join(RASTER_EXTENSIONS)})")
    label_files = {p.stem: p for p in sorted(labels.iterdir(), reverse=True)
                   if p.is_file() and p.suffix.lower() in LABEL_EXTENSIONS}
    missing = [p.name for p in scenes if p.stem not in label_files]
    if missing:
        raise UserError(f"--from-rasters: {len(missing)} scene(s) have no label of the same name in {labels} "
                        f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); labels are "
                        f"{'/'.join(LABEL_EXTENSIONS)} files of class indices")
    return [ScenePair(p.stem, p, label_files[p.stem]) for p in scenes]


def check_pair(pair: ScenePair, image, label) -> None:
    """UserError when the label scene's size, transform or CRS is not its image's, or it is not one band."""
    if (label.width, label.height) != (image.width, image.height):
        raise UserError(f"label {pair.label} is {label.width}x{label.height} px but its image {pair.image} is "
                        f"{image.width}x{image.height}: a label scene must cover its image pixel for pixel")
    georeferenced = label.crs is not None or not label.transform.is_identity
    if georeferenced and label.crs != image.crs:
        raise UserError(f"label {pair.label} has CRS {label.crs} but its image {pair.image} has {image.crs}: "
                        "reproject the label onto its image's grid (e.g. gdalwarp -t_srs ... -te ... -ts ...)")
    if georeferenced and not label.transform.almost_equals(image.transform):
        raise UserError(f"label {pair.label} has the transform {tuple(label.transform)[:6]} but its image "
                        f"{pair.image} has {tuple(image.transform)[:6]}: the label must lie on its image's grid")
    if label.count != 1 or np.dtype(label.dtypes[0]).kind not in "ui":
        raise UserError(f"label {pair.label} has {label.count} band(s) of {label.dtypes[0]}: a label scene is one "
                        "band of integer class indices (255 = ignore)")


def positions(length: int, tile: int, stride: int, to_edge: bool) -> list[int]:
    """Starts of the tiles along an axis of ``length`` pixels: every ``stride``; with ``to_edge`` a last tile
    moved back to touch the end when the steps leave some pixels out. No tile when ``length < tile``."""
    if length < tile:
        return []
    starts = list(range(0, length - tile + 1, stride))
    if to_edge and starts[-1] != length - tile:
        starts.append(length - tile)
    return starts


def _windows(rows: tuple[int, int], width: int, tile: int, stride: int, to_edge: bool) -> Iterator[tuple[int, int]]:
    """(row, col) of the tiles inside rows ``rows`` = (first, end) of a scene ``width`` pixels wide."""
    for row in positions(rows[1] - rows[0], tile, stride, to_edge):
        for col in positions(width, tile, stride, to_edge):
            yield rows[0] + row, col


def _val_scenes(pairs: list[ScenePair], options: TileOptions) -> set[str]:
    """The stems of the scenes drawn for val (scene split)."""
    count = max(1, round(len(pairs) * options.val_fraction))
    order = np.random.default_rng(options.seed).permutation(len(pairs))
    return {pairs[i].stem for i in order[:count]}


def _plan(pair: ScenePair, height: int, width: int, options: TileOptions, scene_split: bool,
          val_scenes: set[str], result: TileResult) -> Iterator[tuple[str, int, int]]:
    """(split, row, col) of every tile of one scene."""
    tile, stride = options.tile, options.train_stride
    if scene_split:
        split = "val" if pair.stem in val_scenes else "train"
        yield from ((split, r, c) for r, c in _windows((0, height), width, tile,
                                                       tile if split == "val" else stride, split == "train"))
        return
    val_rows = max(1, round(height * options.val_fraction / tile)) * tile
    if height < val_rows + tile:
        result.notes.append(f"{pair.image} is {height} px high: too small for a val block of {val_rows} rows and "
                            f"a {tile} px train tile above it; all its tiles go to train")
        val_rows = 0
    yield from (("train", r, c) for r, c in _windows((0, height - val_rows), width, tile, stride, True))
    if val_rows:
        yield from (("val", r, c) for r, c in _windows((height - val_rows, height), width, tile, tile, False))


def _prepare(root: Path, force: bool) -> tuple[Path, Path, Path]:
    images, labels, splits = root / "JPEGImages", root / "SegmentationClass", root / "ImageSets" / "Segmentation"
    for folder in (images, labels):
        if folder.is_dir() and any(folder.iterdir()) and not force:
            raise UserError(f"{folder} already holds files: choose another --data-root, or add --force to write "
                            "the tiles into it (files of the same name are replaced)")
    for folder in (images, labels, splits):
        folder.mkdir(parents=True, exist_ok=True)
    return images, labels, splits


def _read_label(source, pair: ScenePair, window) -> np.ndarray:
    """The label window as uint8 class indices (the label's own nodata becomes 255)."""
    values = source.read(1, window=window)
    if values.size and (values.min() < 0 or values.max() > 255):
        raise UserError(f"label {pair.label} holds values outside 0..255 ({values.min()}..{values.max()}); "
                        "class indices are 0, 1, 2, ... and 255 = ignore")
    label = values.astype(np.uint8)
    if source.nodata is not None:
        label[values == source.nodata] = IGNORE_INDEX
    return label


def tile_scenes(images: str | os.PathLike, labels: str | os.PathLike, root: str | os.PathLike,
                options: TileOptions) -> TileResult:
    """Cut every scene pair of ``images`` / ``labels`` into tiles under ``root`` and write its split files
    (see the module docstring).

    Raises:
        UserError: no scene, a scene without a label, a label that does not match its image, a scene that
            cannot be read, an output folder that already holds files (without ``force``), or no tile at all
            in train or val.
    """
    import rasterio
    from rasterio.errors import RasterioError, RasterioIOError
    from rasterio.windows import Window

    pairs = find_scene_pairs(images, labels)
    root = Path(root)
    result = TileResult(scenes=len(pairs))
    scene_split = len(pairs) >= MIN_SCENES_FOR_SCENE_SPLIT
    result.split_by = "scene" if scene_split else "block"
    val_scenes = _val_scenes(pairs, options) if scene_split else set()
    image_dir, label_dir, split_dir = _prepare(root, options.force)
    stems: dict[str, list[str]] = {"train": [], "val": []}
    for pair in pairs:
        try:
            with rasterio.open(pair.image) as image, rasterio.open(pair.label) as label:
                check_pair(pair, image, label)
                for split, row, col in _plan(pair, image.height, image.width, options, scene_split, val_scenes,
                                             result):
                    window = Window(col, row, options.tile, options.tile)
                    valid = image.dataset_mask(window=window) > 0
                    if not valid.any():
                        result.skipped_nodata += 1
                        continue
                    tile_label = _read_label(label, pair, window)
                    tile_label[~valid] = IGNORE_INDEX
                    if bool((tile_label == IGNORE_INDEX).all()):
                        result.skipped_ignored += 1
                        continue
                    stem = f"{pair.stem}_{row:05d}_{col:05d}"
                    _write_tile(image, window, image_dir / f"{stem}.tif")
                    save_label(tile_label, label_dir / f"{stem}.png")
                    stems[split].append(stem)
        except RasterioIOError as exc:
            raise UserError(f"cannot read scene {pair.image} or its label {pair.label} ({exc})") from None
        except RasterioError as exc:
            raise UserError(f"cannot decode scene {pair.image} or its label {pair.label} ({exc}); the data is "
                            "damaged: replace the file") from None
    for split, names in stems.items():
        if not names:
            raise UserError(f"--from-rasters wrote no {split} tile from {len(pairs)} scene(s) with --tile "
                            f"{options.tile}: use smaller tiles, more scenes, or check the nodata and labels")
        result.tiles[split] = len(names)
    (split_dir / "train.txt").write_text("\n".join(stems["train"]) + "\n", encoding="utf-8")
    (split_dir / "val.txt").write_text("\n".join(stems["val"]) + "\n", encoding="utf-8")
    (split_dir / "trainval.txt").write_text("\n".join(stems["train"] + stems["val"]) + "\n", encoding="utf-8")
    return result


def _write_tile(source, window, path: Path) -> None:
    """The ``window`` of ``source`` as a GeoTIFF: its bands, dtype, nodata and CRS, the window's transform."""
    import rasterio

    data = source.read(window=window)
    with rasterio.open(path, "w", driver="GTiff", height=data.shape[1], width=data.shape[2], count=data.shape[0],
                       dtype=data.dtype.name, crs=source.crs, transform=source.window_transform(window),
                       nodata=source.nodata, compress="deflate") as target:
        target.write(data)

