"""BASELINE ONLY: a rebuild of the original release's training/validation loader, for benchmarks.

This is not used by the toolkit. It reproduces, from the published recipe, what the original
``DeeplabDataset`` does per sample so that ``bench/bench_data.py`` can compare costs on the same
machine: Pillow resizing and pasting, the same augmentation (aspect jitter 0.3, scale 0.25-2,
flip 0.5, random placement, 5x5 blur p 0.25, rotation +-10 p 0.25, HSV jitter), a float64
image divided by 255 on the CPU, and a ``num_classes + 1`` channel float64 one-hot label
(22 channels, about 46 MB at 512x512). As in the original, padding and rotation borders are
label 0 (background) and label values >= num_classes are folded into the extra channel.
The legacy global numpy generator is used on purpose, exactly like the original.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image


def _rand(a: float = 0.0, b: float = 1.0) -> float:
    return np.random.rand() * (b - a) + a


class OriginalDeeplabDataset:
    """Per-sample work of the original loader: (float64 CHW image, uint8 label, float64 one-hot)."""

    def __init__(self, image_paths: list[Path], label_paths: list[Path], input_shape: tuple[int, int],
                 num_classes: int, train: bool) -> None:
        self.image_paths, self.label_paths = image_paths, label_paths
        self.input_shape, self.num_classes, self.train = input_shape, num_classes, train

    def __len__(self) -> int:
        return len(self.image_paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        jpg = Image.open(self.image_paths[index])
        png = Image.open(self.label_paths[index])
        jpg, png = self.get_random_data(jpg, png, self.input_shape, random=self.train)
        jpg = np.transpose(np.array(jpg, np.float64) / 255.0, [2, 0, 1])
        png = np.array(png)
        png[png >= self.num_classes] = self.num_classes
        seg_labels = np.eye(self.num_classes + 1)[png.reshape([-1])]
        seg_labels = seg_labels.reshape((int(self.input_shape[0]), int(self.input_shape[1]), self.num_classes + 1))
        return jpg, png, seg_labels

    def get_random_data(self, image, label, input_shape, jitter=0.3, hue=0.1, sat=0.7, val=0.3, random=True):
        image = image.convert("RGB")
        label = Image.fromarray(np.array(label))
        iw, ih = image.size
        h, w = input_shape
        if not random:
            scale = min(w / iw, h / ih)
            nw, nh = int(iw * scale), int(ih * scale)
            image = image.resize((nw, nh), Image.BICUBIC)
            new_image = Image.new("RGB", (w, h), (128, 128, 128))
            new_image.paste(image, ((w - nw) // 2, (h - nh) // 2))
            label = label.resize((nw, nh), Image.NEAREST)
            new_label = Image.new("L", (w, h), 0)
            new_label.paste(label, ((w - nw) // 2, (h - nh) // 2))
            return new_image, new_label

        new_ar = iw / ih * _rand(1 - jitter, 1 + jitter) / _rand(1 - jitter, 1 + jitter)
        scale = _rand(0.25, 2)
        if new_ar < 1:
            nh = int(scale * h)
            nw = int(nh * new_ar)
        else:
            nw = int(scale * w)
            nh = int(nw / new_ar)
        image = image.resize((nw, nh), Image.BICUBIC)
        label = label.resize((nw, nh), Image.NEAREST)
        if _rand() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            label = label.transpose(Image.FLIP_LEFT_RIGHT)
        dx = int(_rand(0, w - nw))
        dy = int(_rand(0, h - nh))
        new_image = Image.new("RGB", (w, h), (128, 128, 128))
        new_label = Image.new("L", (w, h), 0)
        new_image.paste(image, (dx, dy))
        new_label.paste(label, (dx, dy))
        image, label = new_image, new_label

        image_data = np.array(image, np.uint8)
        if _rand() < 0.25:
            image_data = cv2.GaussianBlur(image_data, (5, 5), 0)
        if _rand() < 0.25:
            center = (w // 2, h // 2)
            rotation = np.random.randint(-10, 11)
            matrix = cv2.getRotationMatrix2D(center, -rotation, scale=1)
            image_data = cv2.warpAffine(image_data, matrix, (w, h), flags=cv2.INTER_CUBIC,
                                        borderValue=(128, 128, 128))
            label = cv2.warpAffine(np.array(label, np.uint8), matrix, (w, h), flags=cv2.INTER_NEAREST,
                                   borderValue=(0))

        r = np.random.uniform(-1, 1, 3) * [hue, sat, val] + 1
        hue_c, sat_c, val_c = cv2.split(cv2.cvtColor(image_data, cv2.COLOR_RGB2HSV))
        dtype = image_data.dtype
        x = np.arange(0, 256, dtype=r.dtype)
        lut_hue = ((x * r[0]) % 180).astype(dtype)
        lut_sat = np.clip(x * r[1], 0, 255).astype(dtype)
        lut_val = np.clip(x * r[2], 0, 255).astype(dtype)
        image_data = cv2.merge((cv2.LUT(hue_c, lut_hue), cv2.LUT(sat_c, lut_sat), cv2.LUT(val_c, lut_val)))
        image_data = cv2.cvtColor(image_data, cv2.COLOR_HSV2RGB)
        return image_data, label
