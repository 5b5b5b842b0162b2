"""The segmentation dataset: image/label pairs of one split, letterboxed or augmented.

Samples stay compact (uint8 image and uint8 label tensors); the float conversion and /255
scaling happen on the device in :func:`utils.data.loader.to_device`, so no float64 arrays and
no one-hot labels are ever built on the CPU.
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
from utils.data.io import (
    IGNORE_INDEX,
    IMAGE_EXTENSIONS,
    LABEL_MODES,
    exif_orientation,
    label_from_pil,
    load_image,
    load_label,
)
from utils.data.label_map import LabelMap
from utils.data.layout import check_layout, index_images, read_split, size_mismatch_message
from utils.data.transforms import augment, letterbox
from utils.errors import UserError


class SegmentationDataset(Dataset):
    """Image/label pairs of one split in the VOC layout, letterboxed (``train=False``) or augmented.

    ``__getitem__`` returns ``(image uint8 tensor (3, H, W), label uint8 tensor (H, W))`` at
    ``input_size`` = (height, width); the image is a channels-first view of an HWC array (call
    ``.contiguous()`` if you need one; the loader's collation stacks it into a contiguous batch).
    The layout, the split names and every pair's header (both files open, sizes match, label is
    single-channel) are validated in ``__init__``; label values above the class count are caught
    cheaply when a sample is read. ``label_map`` (``--label-map``) remaps label values as they
    are read; the files are never rewritten. With ``crop`` (training only) samples are random crops of
    the rescaled image (:func:`utils.data.crop.crop_augment`) instead of the letterbox-style augmentation.
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
    ) -> None:
        self.root = Path(root)
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
        """Open every pair lazily (header only) to catch unreadable files, size mismatches and colour labels."""
        for image_path, label_path in zip(self._images, self._labels, strict=True):
            try:
                with Image.open(image_path) as image:
                    image_size = image.size
                    if exif_orientation(image) in (5, 6, 7, 8):
                        # EXIF orientations that rotate by 90 degrees swap width and height.
                        image_size = image_size[::-1]
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise UserError(f"cannot read image {image_path} ({exc}); replace it or remove "
                                f"'{image_path.stem}' from the split file") from None
            try:
                with Image.open(label_path) as label:
                    label_size = label.size
                    if label.mode not in LABEL_MODES:
                        label_from_pil(label, label_path)
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise UserError(f"cannot read label {label_path} ({exc}); replace it or remove "
                                f"'{label_path.stem}' from the split file") from None
            if image_size != label_size:
                raise UserError(size_mismatch_message(image_path, image_size, label_path, label_size,
                                                      "a label must have exactly its image's size"))

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
        """Read sample ``index`` at its original size: (H, W, 3) uint8 RGB image and (H, W) uint8 label."""
        image = load_image(self._images[index])
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
        if self.train and self.crop is not None:
            image, label = crop_augment(image, label, self.crop, rng)
        elif self.train:
            image, label = augment(image, label, self.input_size, rng)
        else:
            image, label, _ = letterbox(image, self.input_size, label)
        # A (3, H, W) view of the HWC array: the batch collation makes the one contiguous copy.
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label)
