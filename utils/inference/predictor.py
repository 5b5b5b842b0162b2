"""The one inference pipeline: letterbox, forward, crop the padding, resize probabilities, argmax.

``predict.py``, ``get_miou.py``, its video mode and the evaluation during training all go
through :class:`Predictor`. The forward pass is a swappable backend
(:mod:`utils.inference.backends`): PyTorch or ONNX Runtime, with exactly the same pre- and
post-processing.

The class map is defined as: softmax over classes (sigmoid for a one-channel model), crop of
the letterbox content box, bilinear resize of the probabilities to the original size
(``align_corners=False``, as the original's ``cv2.resize``), argmax (or ``> threshold``).
:meth:`Predictor.predict` computes exactly that without the full-size probabilities
(:func:`utils.inference.postprocess.upsample_labels`); :meth:`Predictor.predict_proba` returns
them. Test-time augmentation averages the probabilities over scales and a horizontal flip.
With :attr:`Predictor.slide` set (the default for models trained on crops), images go through
sliding windows at native resolution instead (:mod:`utils.inference.slide`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.checkpoint import DEFAULT_THRESHOLD, load_model
from utils.data.io import default_class_names
from utils.data.transforms import letterbox
from utils.device import resolve_device
from utils.errors import MIN_INPUT_SIDE, UserError
from utils.inference.backends import OnnxBackend, TorchBackend
from utils.inference.postprocess import average_upsampled_labels, labels_and_prob, probabilities, upsample_labels
from utils.inference.slide import SlideOptions, default_slide, slide_predict


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _scaled_sizes(input_size: tuple[int, int], tta: bool, scales: Sequence[float]) -> list[tuple[int, int]]:
    """Network input sizes: ``input_size``, or each TTA scale of it."""
    if not tta:
        return [input_size]
    if not scales:
        raise ValueError("tta needs at least one scale")
    return [(max(MIN_INPUT_SIDE, round(input_size[0] * s)), max(MIN_INPUT_SIDE, round(input_size[1] * s)))
            for s in scales]


def _check_images(images: Sequence[np.ndarray]) -> None:
    for image in images:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                and image.shape[2] == 3):
            raise ValueError("Predictor expects RGB uint8 arrays of shape (H, W, 3)")


class Predictor:
    """Segment RGB uint8 images of any size with a DeepLabV3+ model.

    Args:
        model: a DeepLab; it is not modified (an optimised copy is used) unless ``optimize=False``,
            in which case it is only switched to eval mode.
        config: at least ``num_classes`` and ``input_size`` ([h, w]); ``class_names`` optional;
            ``task`` (``binary`` for a one-channel model, which has 2 classes) and its ``threshold``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` ...
        batch_size: images per forward pass.
        optimize / channels_last / precision: see :class:`TorchBackend` and :func:`resolve_precision`.
        backend: a ready forward callable instead of the model (used for ONNX Runtime).

    A one-channel model is binary: where its sigmoid probability reaches ``config["threshold"]``
    (default 0.5) the class is 1.
    """

    def __init__(self, model: nn.Module | None, config: dict[str, Any], device: str | torch.device = "auto",
                 batch_size: int = 4, optimize: bool = True, channels_last: bool | None = None,
                 precision: str = "auto", backend: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if backend is None:
            if model is None:
                raise ValueError("Predictor needs a model or a backend")
            backend = TorchBackend(model, resolve_device(device), optimize, channels_last, precision)
        self.backend = backend
        self.device: torch.device = backend.device
        self.config = dict(config)
        self.num_classes = int(config["num_classes"])
        names = config.get("class_names")
        self.class_names: list[str] = list(names) if names else default_class_names(self.num_classes)
        size = config.get("input_size") or [512, 512]
        if isinstance(size, int):
            size = [size, size]
        self.input_size: tuple[int, int] = (int(size[0]), int(size[-1]))
        self.batch_size = max(1, int(batch_size))
        self.task: str = config.get("task") or "multiclass"
        threshold = config.get("threshold")
        self.threshold = DEFAULT_THRESHOLD if threshold is None else float(threshold)
        # A binary ONNX export ends in the sigmoid: its outputs are probabilities already.
        self._outputs_probabilities = bool(getattr(backend, "outputs_probabilities", False))
        # Sliding windows instead of the letterbox in predict() and predict_with_prob(); on by default for
        # models trained on crops.
        self.slide: SlideOptions | None = default_slide(self.config)

    @classmethod
    def from_weights(cls, path: str | Path, device: str | torch.device = "auto", batch_size: int = 4,
                     optimize: bool = True, precision: str = "auto", **overrides: Any) -> Predictor:
        """Load our checkpoint (config inside) or a bare original state dict.

        ``overrides`` go to :func:`utils.checkpoint.load_model`: ``num_classes``, ``class_names``,
        ``downsample_factor``, ``input_size``, ``backbone`` (None values are ignored).
        """
        device = resolve_device(device)
        model, config = load_model(path, device="cpu", **overrides)
        return cls(model, config, device, batch_size=batch_size, optimize=optimize, precision=precision)

    @classmethod
    def from_onnx(cls, path: str | Path, batch_size: int = 4, threads: int | None = None,
                  **overrides: Any) -> Predictor:
        """Run an exported ONNX model through ONNX Runtime (CPU), with the same pipeline.

        The config comes from the file's metadata (written by :mod:`utils.onnx_export`);
        ``overrides`` (``input_size``, ``class_names``, ``num_classes``) fill in or replace it.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX file not found: {path}. Check the path given to --onnx.")
        backend = OnnxBackend(path, threads=threads)
        config = backend.resolved_config(overrides)
        return cls(None, config, backend=backend, batch_size=batch_size)

    def _to_batch(self, canvases: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(canvases)).to(self.device, non_blocking=True)
        return batch.permute(0, 3, 1, 2).float().div_(255.0)

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch of backend outputs (softmax, or sigmoid for one channel)."""
        return output if self._outputs_probabilities else probabilities(output)

    def _maps_at_scale(self, images: Sequence[np.ndarray], size: tuple[int, int], flip: bool,
                       logits: bool = False) -> list[torch.Tensor]:
        """Class probabilities (C, h, w) of each image's letterbox content box, for one network input size
        (with ``logits`` and no ``flip``, the network's outputs there instead)."""
        out: list[torch.Tensor] = []
        for chunk in _chunks(images, self.batch_size):
            placed = [letterbox(image, size) for image in chunk]
            batch = self._to_batch([canvas for canvas, _, _ in placed])
            output = self.backend(torch.cat((batch, batch.flip(3))) if flip else batch)
            for index, (_, _, box) in enumerate(placed):
                rows, cols = slice(box.top, box.top + box.height), slice(box.left, box.left + box.width)
                if logits and not flip:
                    out.append(output[index, :, rows, cols])
                    continue
                probs = self.probabilities(output[index:index + 1, :, rows, cols])
                if flip:
                    mirrored = output[len(chunk) + index:len(chunk) + index + 1].flip(3)
                    probs = (probs + self.probabilities(mirrored[:, :, rows, cols])) * 0.5
                out.append(probs[0])
        return out

    def predict_proba(self, images: Sequence[np.ndarray], tta: bool = False,
                      scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True) -> list[torch.Tensor]:
        """Class probabilities (C, H, W) float32 at each image's original size, on the predictor's device.

        This holds C x H x W floats per image (1 GB for 21 classes at 12 MP); :meth:`predict`
        gives the same argmax without them.

        Args:
            images: RGB uint8 arrays (H, W, 3), sizes may differ.
            tta: average over ``scales`` (of the input size) and, with ``flip``, horizontal flips.
        """
        _check_images(images)
        sizes = _scaled_sizes(self.input_size, tta, scales)
        total: list[torch.Tensor] | None = None
        for size in sizes:
            maps = self._maps_at_scale(images, size, flip=tta and flip)
            probs = [m if m.shape[1:] == image.shape[:2] else
                     F.interpolate(m[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
                     for m, image in zip(maps, images, strict=True)]
            total = probs if total is None else [t.add_(p) for t, p in zip(total, probs, strict=True)]
        return total if len(sizes) == 1 else [t.div_(len(sizes)) for t in total]

    def _check_masks(self, images: Sequence[np.ndarray], tta: bool) -> None:
        """ValueError for inputs that are not RGB uint8 images, for more classes than uint8 masks hold,
        or for test-time augmentation under sliding windows."""
        if self.num_classes > 256:
            raise ValueError("uint8 masks hold at most 256 classes")
        _check_images(images)
        if tta and self.slide is not None:
            raise ValueError("test-time augmentation is not available with sliding windows")

    def predict(self, images: Sequence[np.ndarray], tta: bool = False,
                scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True) -> list[np.ndarray]:
        """Class-index masks uint8 (H, W) at each image's original size: the argmax of :meth:`predict_proba`
        (ties aside), computed by :mod:`utils.inference.postprocess` without full-size probabilities.
        A binary model's mask is 1 where the foreground probability reaches :attr:`threshold`.

        With :attr:`slide` set, each image goes through :func:`~utils.inference.slide.slide_predict`
        instead of the letterbox (test-time augmentation is not available there).
        """
        self._check_masks(images, tta)
        if self.slide is not None:
            return [slide_predict(self, image, self.slide) for image in images]
        sizes = _scaled_sizes(self.input_size, tta, scales)
        # One plain forward: upsample_labels takes the logits and softmaxes only where classes meet.
        logits = len(sizes) == 1 and not (tta and flip) and not self._outputs_probabilities
        per_size = [self._maps_at_scale(images, size, flip=tta and flip, logits=logits) for size in sizes]
        masks = []
        for index, image in enumerate(images):
            maps = [maps[index] for maps in per_size]
            if len(maps) == 1:
                masks.append(upsample_labels(maps[0], image.shape[:2], self.threshold, logits=logits))
            else:
                masks.append(average_upsampled_labels(maps, image.shape[:2], self.threshold))
        return masks

    def predict_with_prob(self, images: Sequence[np.ndarray], tta: bool = False,
                          scales: Sequence[float] = (0.75, 1.0, 1.25),
                          flip: bool = True) -> list[tuple[np.ndarray, torch.Tensor]]:
        """``(mask, prob)`` per image: the mask of :meth:`predict` and, from the same probabilities, the
        foreground probability (binary) or the predicted class's probability (H, W), float32 on the device.

        Unlike :meth:`predict` this goes through the full-size probabilities of one image at a time,
        except with :attr:`slide` set: then, as in :meth:`predict`, each image goes through
        :func:`~utils.inference.slide.slide_predict`, which keeps only the (H, W) map besides the mask.
        """
        self._check_masks(images, tta)
        if self.slide is not None:
            return [slide_predict(self, image, self.slide, with_prob=True) for image in images]
        out = []
        for image in images:
            (p,) = self.predict_proba([image], tta=tta, scales=scales, flip=flip)
            mask, prob = labels_and_prob(p, self.threshold)
            out.append((mask.cpu().numpy(), prob))
        return out
