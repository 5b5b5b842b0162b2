"""The segmentation dataset: image/label pairs of one split, letterboxed or augmented.

Samples stay compact (the image in its file's dtype, a uint8 label); the float conversion and the
normalisation (/255, or per-band statistics: :mod:`utils.data.normalize`) happen on the device in
:func:`utils.data.loader.to_device`, so no float64 arrays and no one-hot labels are ever built on
the CPU. Images are photos (8-bit RGB) or rasters (:mod:`utils.data.raster`: TIFF/GeoTIFF with any
band count, uint8, uint16, int16 or float32); every image of a split must have the same bands and dtype.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from utils.data.crop import CropParams, crop_augment
from utils.data.io import IGNORE_INDEX, IMAGE_EXTENSIONS, LABEL_MODES, label_from_pil, load_label
from utils.data.label_map import LabelMap
from utils.data.layout import check_layout, index_images, read_split, size_mismatch_message
from utils.data.normalize import SUPPORTED_DTYPES, Normalization
from utils.data.raster import check_bands, image_info, is_raster, read_image, read_raster_valid
from utils.data.transforms import augment, letterbox
from utils.errors import UserError


class SegmentationDataset(Dataset):
    """Image/label pairs of one split in the VOC layout, letterboxed (``train=False``) or augmented.

    ``__getitem__`` returns ``(image tensor (C, H, W) in the file's dtype, label uint8 tensor (H, W))`` at
    ``input_size`` = (height, width); the image is a channels-first view of an HWC array (call
    ``.contiguous()`` if you need one; the loader's collation stacks it into a contiguous batch).
    The layout, the split names and every pair's header (both files open, sizes match, label is
    single-channel) are validated in ``__init__``; label values above the class count are caught
    cheaply when a sample is read. ``label_map`` (``--label-map``) remaps label values as they
    are read; the files are never rewritten. With ``crop`` (training only) samples are random crops of
    the rescaled image (:func:`utils.data.crop.crop_augment`) instead of the letterbox-style augmentation.
    ``bands`` (1-based, ``--bands``) selects and orders the channels read from each image (None: all);
    :attr:`normalization` (set by the trainer once it knows the statistics) gives the padding value.
    Images that disagree in band count or dtype are a :class:`UserError` naming one file of each kind.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        input_size: tuple[int, int] | int,
        num_classes: int,
        train: bool,
        class_names: Sequence[str] | None = None,
        label_map: LabelMap | None = None,
        crop: CropParams | None = None,
        bands: Sequence[int] | None = None,
        normalization: Normalization | None = None,
    ) -> None:
        self.root = Path(root)
        self.bands = None if bands is None else tuple(bands)
        self.normalization = normalization or Normalization()
        self.label_map = label_map
        self.split = split
        if isinstance(input_size, int):
            input_size = (input_size, input_size)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.num_classes = int(num_classes)
        self.train = bool(train)
        self.class_names = list(class_names) if class_names is not None else None
        self.crop = crop
        self.rng = np.random.default_rng()
        check_layout(self.root)
        self.stems = read_split(self.root, split)
        images = index_images(self.root / "JPEGImages")
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        self._images: list[Path] = []
        self._labels: list[Path] = []
        for stem in self.stems:
            image_path = images.get(stem)
            if image_path is None:
                raise UserError(f"{split_file} names '{stem}' but there is no image JPEGImages/{stem}"
                                f"{{{','.join(IMAGE_EXTENSIONS)}}} in {self.root}: add the image or rerun "
                                "voc_annotation.py --force to rewrite the split files")
            label_path = self.root / "SegmentationClass" / f"{stem}.png"
            if not label_path.is_file():
                raise UserError(f"{split_file} names '{stem}' but its label {label_path} does not exist: "
                                "add the label or rerun voc_annotation.py --force")
            self._images.append(image_path)
            self._labels.append(label_path)
        self._check_headers()

    def _check_headers(self) -> None:
        """Open every pair lazily (header only) to catch unreadable files, size mismatches, colour labels, bands
        out of range and images that disagree in band count or dtype; sets :attr:`channels` and :attr:`dtype`."""
        kinds: dict[tuple[int, str], Path] = {}
        for image_path, label_path in zip(self._images, self._labels, strict=True):
            info = image_info(image_path)
            check_bands(info.count, self.bands, image_path)
            kinds.setdefault((info.count, info.dtype), image_path)
            try:
                with Image.open(label_path) as label:
                    label_size = label.size
                    if label.mode not in LABEL_MODES:
                        label_from_pil(label, label_path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise UserError(f"cannot read label {label_path} ({exc}); replace it or remove "
                                f"'{label_path.stem}' from the split file") from None
            if (info.width, info.height) != label_size:
                raise UserError(size_mismatch_message(image_path, (info.width, info.height), label_path, label_size,
                                                      "a label must have exactly its image's size"))
        if len(kinds) > 1:
            listed = "; ".join(f"{path} has {count} band(s) of {dtype}" for (count, dtype), path in kinds.items())
            raise UserError(f"the {self.split} split mixes images of different bands or dtypes: {listed}. Every "
                            "image of a dataset needs the same band count and dtype: convert them or split them "
                            "into separate datasets")
        count, dtype = next(iter(kinds)) if kinds else (3, "uint8")
        if dtype not in SUPPORTED_DTYPES:
            raise UserError(f"{kinds[(count, dtype)]} holds {dtype} bands; the toolkit reads "
                            f"{', '.join(SUPPORTED_DTYPES)}: convert the images (e.g. gdal_translate -ot UInt16)")
        self.file_bands = count
        self.channels = len(self.bands) if self.bands is not None else count
        self.dtype = dtype

    @property
    def kind(self) -> tuple[int, str]:
        """(channels read, dtype): what every image of the split gives."""
        return self.channels, self.dtype

    @property
    def rgb8(self) -> bool:
        """True for 8-bit three-channel input: the /255 rule and the colour jitter apply."""
        return self.kind == (3, "uint8")

    def read_image(self, index: int) -> np.ndarray:
        """The image of sample ``index`` at its original size, (H, W, C) in its file's dtype, a raster's invalid
        samples (nodata, mask, alpha) replaced by the :attr:`normalization`'s fill."""
        return read_image(self._images[index], self.bands, self.normalization)

    def read_image_valid(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The image of sample ``index`` as read, and its valid mask (None: every pixel valid, and for photos)."""
        path = self._images[index]
        if is_raster(path):
            return read_raster_valid(path, self.bands)
        return read_image(path, self.bands), None

    def __len__(self) -> int:
        return len(self.stems)

    def image_path(self, index: int) -> Path:
        """Path of the image of sample ``index``."""
        return self._images[index]

    def label_path(self, index: int) -> Path:
        """Path of the label of sample ``index``."""
        return self._labels[index]

    def read_label(self, index: int) -> np.ndarray:
        """The label of sample ``index`` at its original size, remapped by the dataset's label map."""
        label = load_label(self._labels[index])
        return label if self.label_map is None else self.label_map.apply(label)

    def set_rng(self, rng: np.random.Generator) -> None:
        """Use ``rng`` for the augmentation of ``dataset[index]`` (the loaders pass a generator per sample instead)."""
        self.rng = rng

    def load_pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Read sample ``index`` at its original size: (H, W, C) image and (H, W) uint8 label."""
        image = self.read_image(index)
        label = self.read_label(index)
        if image.shape[:2] != label.shape:
            raise UserError(size_mismatch_message(self._images[index], (image.shape[1], image.shape[0]),
                                                  self._labels[index], (label.shape[1], label.shape[0])))
        peak = int(label.max(initial=0))
        if peak >= self.num_classes and (peak != IGNORE_INDEX or bool(
                np.any((label >= self.num_classes) & (label != IGNORE_INDEX)))):
            bad = np.unique(label[(label >= self.num_classes) & (label != IGNORE_INDEX)])
            raise UserError(f"label {self._labels[index]} holds value(s) {', '.join(map(str, bad[:8]))} but "
                            f"there are only {self.num_classes} classes (0..{self.num_classes - 1}, 255 = "
                            "ignore)" + (f" after --label-map {self.label_map.spec()}" if self.label_map else "")
                            + ". Check --num-classes / the class list / --label-map, or run voc_annotation.py")
        return image, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sample(index, self.rng)

    def sample(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``index`` with its augmentation drawn from ``rng`` alone (the same rng state, the same sample).

        :class:`utils.data.loader.SeededLoader` passes a generator seeded from (seed, epoch, index).
        """
        image, label = self.load_pair(index)
        fill = self.normalization.fill(image.shape[2], image.dtype)
        if self.train and self.crop is not None:
            image, label = crop_augment(image, label, self.crop, rng, fill)
        elif self.train:
            image, label = augment(image, label, self.input_size, rng, fill=fill)
        else:
            image, label, _ = letterbox(image, self.input_size, label, fill=fill)
        # A (C, H, W) view of the HWC array: the batch collation makes the one contiguous copy.
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label)
