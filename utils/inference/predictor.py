"""The one inference pipeline: letterbox, forward, crop the padding, resize probabilities, argmax.

``predict.py``, ``get_miou.py`` and the evaluation during training all go through
:class:`Predictor`. The forward pass is a swappable backend (:mod:`utils.inference.backends`):
PyTorch or ONNX Runtime, with exactly the same pre- and post-processing.

Post-processing happens in torch on the backend's device: softmax over classes, crop of
the letterbox content box, bilinear resize of the class probabilities to the original
size (``align_corners=False``, as the original's ``cv2.resize``), argmax. A binary model
(one output channel) goes through a sigmoid instead, and a pixel is foreground when its
probability reaches the model's threshold. Test-time augmentation averages the
probabilities over scales and a horizontal flip.
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
from utils.errors import UserError
from utils.inference.backends import OnnxBackend, TorchBackend
from utils.inference.slide import SlideOptions, default_slide, slide_predict


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over classes; channels-last logits (our CPU/CUDA layout) are reduced over their innermost
    dimension, which is 2-3x faster than ``softmax(1)`` on the strided layout or a copy to NCHW."""
    if logits.is_contiguous(memory_format=torch.channels_last) and not logits.is_contiguous():
        return logits.permute(0, 2, 3, 1).softmax(-1).permute(0, 3, 1, 2)
    return logits.softmax(1)


def _probabilities(output: torch.Tensor, already: bool = False) -> torch.Tensor:
    """Probabilities of a batch of network outputs: sigmoid for one channel (binary), else softmax;
    ``already`` when the backend returns probabilities (a binary ONNX export has the sigmoid inside)."""
    if already:
        return output
    return output.sigmoid() if output.shape[1] == 1 else _softmax(output)


def labels_and_prob(probs: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Class index per pixel (uint8) and its probability map, from (C, H, W) probabilities.

    One channel is a binary model's foreground probability: the label is 1 where it reaches
    ``threshold``, and the map is that foreground probability. With C >= 2 the label is the
    most probable class and the map that class's probability (both from one ``max`` pass, over the
    tensor's memory order: ``argmax`` over a non-innermost dim is ~3x slower on the CPU).
    """
    if probs.shape[0] == 1:
        return (probs[0] >= threshold).to(torch.uint8), probs[0]
    hwc = probs.permute(1, 2, 0)
    values, indices = hwc.max(-1) if hwc.is_contiguous() else probs.max(0)
    return indices.to(torch.uint8), values


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
        self.task: str = config.get("task") or "multiclass"
        self.threshold = float(config.get("threshold") or DEFAULT_THRESHOLD)
        names = config.get("class_names")
        self.class_names: list[str] = list(names) if names else default_class_names(self.num_classes)
        size = config.get("input_size") or [512, 512]
        if isinstance(size, int):
            size = [size, size]
        self.input_size: tuple[int, int] = (int(size[0]), int(size[-1]))
        self.batch_size = max(1, int(batch_size))
        # Sliding windows instead of the letterbox in predict(); on by default for models trained on crops.
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
        config = backend.config() or {}
        if backend.fixed_size is not None:
            config["input_size"] = list(backend.fixed_size)
        output_shape = backend.session.get_outputs()[0].shape
        if "num_classes" not in config and len(output_shape) == 4 and isinstance(output_shape[1], int):
            binary = output_shape[1] == 1
            config.update(num_classes=2 if binary else output_shape[1], task="binary" if binary else "multiclass")
        names = overrides.get("class_names")
        if names is not None and "num_classes" in config and len(names) != config["num_classes"]:
            raise UserError(f"{path} was exported for {config['num_classes']} classes, but {len(names)} class "
                            "names were given (--classes). Use the class list the model was trained with.")
        config.update({k: v for k, v in overrides.items() if v is not None})
        if "num_classes" not in config:
            raise UserError(f"{path}: cannot tell the number of classes; pass --classes")
        if names is not None:
            config["num_classes"] = len(names)
        return cls(None, config, backend=backend, batch_size=batch_size)

    def _chunks(self, items: Sequence, size: int) -> Iterator[Sequence]:
        for start in range(0, len(items), size):
            yield items[start:start + size]

    def _to_batch(self, canvases: list[np.ndarray]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack(canvases)).to(self.device, non_blocking=True)
        return batch.permute(0, 3, 1, 2).float().div_(255.0)

    def _proba_at_scale(self, images: Sequence[np.ndarray], size: tuple[int, int], flip: bool) -> list[torch.Tensor]:
        """Class probabilities (C, h, w) at each image's original size, for one network input size."""
        out: list[torch.Tensor] = []
        for chunk in self._chunks(images, self.batch_size):
            placed = [letterbox(image, size) for image in chunk]
            batch = self._to_batch([canvas for canvas, _, _ in placed])
            already = getattr(self.backend, "outputs_probabilities", False)
            if flip:
                probs = _probabilities(self.backend(torch.cat((batch, batch.flip(3)))), already)
                probs = (probs[:len(chunk)] + probs[len(chunk):].flip(3)) * 0.5
            else:
                probs = _probabilities(self.backend(batch), already)
            for image, (_, _, box), prob in zip(chunk, placed, probs, strict=True):
                crop = prob[None, :, box.top:box.top + box.height, box.left:box.left + box.width]
                height, width = image.shape[:2]
                if crop.shape[2:] != (height, width):
                    crop = F.interpolate(crop, size=(height, width), mode="bilinear", align_corners=False)
                out.append(crop[0])
        return out

    def predict_proba(self, images: Sequence[np.ndarray], tta: bool = False,
                      scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True) -> list[torch.Tensor]:
        """Class probabilities (C, H, W) float32 at each image's original size, on the predictor's device.

        A binary model gives one channel: the foreground probability.

        Args:
            images: RGB uint8 arrays (H, W, 3), sizes may differ.
            tta: average over ``scales`` (of the input size) and, with ``flip``, horizontal flips.
        """
        for image in images:
            if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3
                    and image.shape[2] == 3):
                raise ValueError("Predictor expects RGB uint8 arrays of shape (H, W, 3)")
        if not tta:
            return self._proba_at_scale(images, self.input_size, flip=False)
        if not scales:
            raise ValueError("tta needs at least one scale")
        total: list[torch.Tensor] | None = None
        for scale in scales:
            size = (max(16, round(self.input_size[0] * scale)), max(16, round(self.input_size[1] * scale)))
            probs = self._proba_at_scale(images, size, flip=flip)
            total = probs if total is None else [t.add_(p) for t, p in zip(total, probs, strict=True)]
        return [t.div_(len(scales)) for t in total]

    def predict(self, images: Sequence[np.ndarray], tta: bool = False,
                scales: Sequence[float] = (0.75, 1.0, 1.25), flip: bool = True) -> list[np.ndarray]:
        """Class-index masks uint8 (H, W) at each image's original size (see :meth:`predict_proba`);
        a binary model's mask is 1 where the foreground probability reaches :attr:`threshold`.

        With ``self.slide`` set, each image goes through :func:`~utils.inference.slide.slide_predict`
        instead of the letterbox (test-time augmentation is not available there).
        """
        if self.num_classes > 256:
            raise ValueError("uint8 masks hold at most 256 classes")
        if self.slide is not None:
            if tta:
                raise ValueError("test-time augmentation is not available with sliding windows")
            return [slide_predict(self, image, self.slide) for image in images]
        probs = self.predict_proba(images, tta=tta, scales=scales, flip=flip)
        return [labels_and_prob(p, self.threshold)[0].cpu().numpy() for p in probs]

    def predict_with_prob(self, images: Sequence[np.ndarray], tta: bool = False,
                          scales: Sequence[float] = (0.75, 1.0, 1.25),
                          flip: bool = True) -> list[tuple[np.ndarray, torch.Tensor]]:
        """``(mask, prob)`` per image: the mask of :meth:`predict` and, from the same probabilities, the
        foreground probability (binary) or the predicted class's probability (H, W), float32 on the device.

        Only the (C, H, W) probabilities of one batch are alive at a time.
        """
        out = []
        for p in self.predict_proba(images, tta=tta, scales=scales, flip=flip):
            mask, prob = labels_and_prob(p, self.threshold)
            out.append((mask.cpu().numpy(), prob))
        return out
