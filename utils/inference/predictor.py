"""The one inference entry point: a model (PyTorch or ONNX Runtime), its spec, and a strategy.

``predict.py``, ``get_miou.py``, its video mode, ``serve``-style callers and the evaluation during
training all go through :class:`Predictor`. It builds the shared :class:`~utils.inference.engine.Engine`
(backend, task, threshold) and runs one of two strategies over it, like mmsegmentation's test modes:
``whole`` (:mod:`utils.inference.whole`: letterbox, forward, crop the padding, resize, argmax) or
``slide`` (:mod:`utils.inference.slide`: windows at native resolution), chosen by
:attr:`InferenceOptions.mode` (``auto``: ``slide`` for models trained on crops).

Example, without any command line::

    predictor = Predictor.from_weights("logs/demo/best.pth", InferenceOptions(device="cpu"))
    mask = predictor.predict([rgb_uint8_image])[0]  # (H, W) class ids; or (H, W, bands) of a raster
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nets.spec import ModelSpec
from nets.task import Task
from utils.checkpoint import load_model
from utils.data.io import default_class_names
from utils.data.normalize import SUPPORTED_DTYPES, Normalization
from utils.device import resolve_device
from utils.errors import UserError
from utils.inference import whole
from utils.inference.backends import OnnxBackend, TorchBackend
from utils.inference.engine import Engine
from utils.inference.options import InferenceOptions, SlideOptions
from utils.inference.slide import check_slide_options, slide_predict


def _check_images(images: Sequence[np.ndarray], spec: ModelSpec) -> None:
    """ValueError unless every image is (H, W, in_channels) of a dtype the model's normalisation reads: uint8
    for the 8-bit /255 rule, uint8, uint16, int16 or float32 for a model with per-band statistics."""
    bands = spec.in_channels
    dtypes = SUPPORTED_DTYPES if spec.mean is not None else ("uint8",)
    for image in images:
        if not (isinstance(image, np.ndarray) and image.dtype.name in dtypes and image.ndim == 3
                and image.shape[2] == bands):
            raise ValueError(f"Predictor expects {' or '.join(dtypes)} arrays of shape (H, W, {bands})"
                             + (" (RGB)" if bands == 3 and spec.mean is None else ""))


class Predictor:
    """Segment images of any size with a DeepLabV3+ model: 8-bit RGB, or the bands and dtype the spec was
    trained on (uint8, uint16, int16, float32; normalised by the spec's per-band statistics).

    Args:
        model: a DeepLab; it is not modified (an optimised copy is used) unless ``options.optimize``
            is False, in which case it is only switched to eval mode. None with ``backend``.
        spec: the model's :class:`~nets.spec.ModelSpec` (classes, task, threshold, input size, crop).
        options: device, precision, batch size, strategy, test-time augmentation, threshold.
        backend: a ready forward callable instead of the model (used for ONNX Runtime).

    Raises:
        ValueError: no model and no backend, or an option the model cannot take (TTA with windows).
    """

    def __init__(self, model: nn.Module | None, spec: ModelSpec, options: InferenceOptions | None = None,
                 backend: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        options = options or InferenceOptions()
        if backend is None:
            if model is None:
                raise ValueError("Predictor needs a model or a backend")
            backend = TorchBackend(model, resolve_device(options.device), options.optimize, options.channels_last,
                                   options.precision)
        self.spec = spec
        self.options = options
        threshold = options.threshold if options.threshold is not None else spec.threshold
        self.engine = Engine(backend, spec.task_obj, spec.input_size, options.batch_size, threshold,
                             Normalization.of(spec), spec.task_obj.output_channels(spec.num_classes))
        mode = options.mode if options.mode != "auto" else ("slide" if spec.crop_size else "whole")
        # The windows of the slide strategy, or None for the whole (letterbox) strategy.
        self.slide: SlideOptions | None = options.slide if mode == "slide" else None
        if self.slide is not None:
            check_slide_options(self.slide.overlap, self.slide.scale, spec.input_size)
            if options.tta:
                raise ValueError("test-time augmentation is not available with sliding windows")

    @classmethod
    def from_weights(cls, path: str | Path, options: InferenceOptions | None = None, *,
                     class_names: Sequence[str] | None = None, num_classes: int | None = None,
                     downsample_factor: int | None = None, input_size: Sequence[int] | None = None) -> Predictor:
        """Load our checkpoint (spec inside) or a bare original state dict; the keyword arguments replace
        what the file says (None: keep it). A class count other than the file's is an error."""
        options = options or InferenceOptions()
        if class_names:
            num_classes = len(class_names)
        model, spec = load_model(path, device="cpu", num_classes=num_classes,
                                 class_names=list(class_names) if class_names else None,
                                 downsample_factor=downsample_factor, input_size=input_size,
                                 threshold=options.threshold)
        return cls(model, spec, options)

    @classmethod
    def from_onnx(cls, path: str | Path, options: InferenceOptions | None = None, *,
                  class_names: Sequence[str] | None = None, input_size: Sequence[int] | None = None) -> Predictor:
        """Run an exported ONNX model through ONNX Runtime (CPU) with the same strategies; the spec comes from
        the file's metadata (written by :mod:`utils.inference.onnx_export`), then the keyword arguments."""
        options = options or InferenceOptions()
        path = Path(path)
        if not path.is_file():
            raise UserError(f"ONNX file not found: {path}. Check the path given to --onnx.")
        backend = OnnxBackend(path, threads=options.threads)
        spec = backend.resolved_spec(class_names=class_names, input_size=input_size, threshold=options.threshold)
        return cls(None, spec, options, backend=backend)

    def use_bands(self, bands: Sequence[int] | None) -> None:
        """Read ``bands`` (1-based, ``--bands``) of raster inputs instead of those the spec records; None keeps them.

        Raises:
            UserError: when their count is not the model's input channels.
        """
        if bands is None:
            return
        if len(bands) != self.spec.in_channels:
            raise UserError(f"--bands {','.join(map(str, bands))} selects {len(bands)} band(s) but the model takes "
                            f"{self.spec.in_channels}" + (f" (trained on bands {','.join(map(str, self.spec.bands))})"
                                                          if self.spec.bands else ""))
        self.spec = self.spec.replace(bands=tuple(bands))

    @property
    def task(self) -> Task:
        """The model's :class:`~nets.task.Task`: every "is it binary" question asks it."""
        return self.engine.task

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.class_names) if self.spec.class_names else default_class_names(self.spec.num_classes)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    @property
    def threshold(self) -> float:
        """The decision threshold of a binary model (ignored by multi-class ones); settable, e.g. to sweep it."""
        return self.engine.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not 0 <= value <= 1:
            raise ValueError(f"threshold {value}: must lie in [0, 1]")
        self.engine.threshold = float(value)

    @property
    def batch_size(self) -> int:
        return self.engine.batch_size

    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def backend(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.engine.backend

    def _tta(self, tta: bool | None) -> tuple[Sequence[float] | None, bool]:
        """The (scales, flip) of a call: ``tta`` None follows the options."""
        enabled = self.options.tta if tta is None else tta
        if not enabled:
            return None, False
        return self.options.tta_scales, self.options.flip

    def _check(self, images: Sequence[np.ndarray], tta: bool | None, masks: bool = True) -> None:
        """ValueError for inputs of the wrong kind, more classes than uint8 masks hold, or TTA with windows."""
        if masks and self.num_classes > 256:
            raise ValueError("uint8 masks hold at most 256 classes")
        _check_images(images, self.spec)
        if tta and self.slide is not None:
            raise ValueError("test-time augmentation is not available with sliding windows")

    def predict(self, images: Sequence[np.ndarray], tta: bool | None = None) -> list[np.ndarray]:
        """Class-index masks uint8 (H, W) at each image's original size (a binary model: 1 where the
        foreground probability reaches :attr:`threshold`). ``tta`` None follows the options."""
        self._check(images, tta)
        if self.slide is not None:
            return [slide_predict(self.engine, image, self.slide) for image in images]
        return whole.predict_labels(self.engine, images, *self._tta(tta))

    def predict_proba(self, images: Sequence[np.ndarray], tta: bool | None = None) -> list[torch.Tensor]:
        """Class probabilities (C, H, W) float32 at each image's size (letterbox strategy; C is 1 for a binary
        model). This holds C x H x W floats per image: :meth:`predict` gives the labels without them."""
        self._check(images, tta, masks=False)
        return whole.predict_proba(self.engine, images, *self._tta(tta))

    def predict_with_prob(self, images: Sequence[np.ndarray],
                          tta: bool | None = None) -> list[tuple[np.ndarray, torch.Tensor]]:
        """``(mask, prob)`` per image: the mask of :meth:`predict` and the foreground probability (binary) or
        the predicted class's probability (H, W), float32 on the device, from the same probabilities."""
        self._check(images, tta)
        if self.slide is not None:
            return [slide_predict(self.engine, image, self.slide, with_prob=True) for image in images]
        return whole.predict_with_prob(self.engine, images, *self._tta(tta))
