"""The model side of the service: a request's settings, checked against the model, and the batch call the
worker thread makes with them.

A request may change a binary model's threshold and switch sliding windows or test-time augmentation.
Those are :class:`Settings` (hashable: the batcher's key), so a batch holds one setting and
:meth:`ModelRunner.run` applies it to the predictor right before the forward pass, from the worker
thread, the only thread that touches the predictor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from utils.inference.outputs import quantize_prob
from utils.inference.predictor import Predictor
from utils.inference.slide import check_slide_options
from utils.inference.visualize import make_palette


class SettingsError(ValueError):
    """Request settings the model cannot take (answered 422)."""


@dataclass(frozen=True)
class Settings:
    """What a request asks of the model: ``threshold`` (binary models; None: the model's), ``slide``
    (sliding windows, else the letterbox), ``tta`` and ``prob`` (also return the probability map)."""

    threshold: float | None
    slide: bool
    tta: bool
    prob: bool = False


class ModelRunner:
    """The predictor, its defaults, and the per-batch call.

    Args:
        predictor: loaded and ready; from now on only :meth:`run` (the worker) uses it.
    """

    def __init__(self, predictor: Predictor) -> None:
        if predictor.spec.in_channels != 3:
            raise ValueError(f"the service takes RGB images; this model reads {predictor.spec.in_channels} bands")
        self.predictor = predictor
        # No progress bar per request: the service's log is its requests.
        self.default_slide = replace(predictor.slide, progress=False) if predictor.slide else None
        # Windows for requests that ask for them on a model that does not use them by default.
        self.slide_options = replace(predictor.options.slide, progress=False)
        self.default_threshold = predictor.threshold
        self.binary = predictor.task.thresholded
        self.palette = make_palette(predictor.num_classes)

    def settings(self, threshold: float | None, slide: bool | None, tta: bool | None,
                 prob: bool = False) -> Settings:
        """The settings of a request's query parameters (None: the model's default); :class:`SettingsError`
        when the model cannot take them."""
        use_slide = self.default_slide is not None if slide is None else slide
        use_tta = self.predictor.options.tta if tta is None else tta
        if use_slide and use_tta:
            raise SettingsError("tta is not available with sliding windows: send tta=false, or slide=false to "
                                "use the letterbox")
        if use_slide and self.default_slide is None:
            try:
                check_slide_options(self.slide_options.overlap, self.slide_options.scale,
                                    self.predictor.input_size)
            except ValueError as exc:
                raise SettingsError(f"slide: {exc}") from None
        # A multi-class model has no threshold: leave it out of the key so its requests still batch together.
        return Settings(threshold if self.binary else None, use_slide, use_tta, prob)

    def run(self, settings: Settings, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``(mask, prob)`` per image: the class-index mask and, with ``settings.prob``, the probability map as
        8-bit grey levels (the foreground's for a binary model, else the predicted class's)."""
        predictor = self.predictor
        predictor.slide = (self.default_slide or self.slide_options) if settings.slide else None
        predictor.threshold = self.default_threshold if settings.threshold is None else settings.threshold
        if settings.prob:
            return [(mask, quantize_prob(prob)) for mask, prob in predictor.predict_with_prob(images, settings.tta)]
        return [(mask, None) for mask in predictor.predict(images, settings.tta)]

    def describe(self) -> dict[str, Any]:
        """The model as ``GET /v1/model`` shows it."""
        spec = self.predictor.spec
        return {
            "classes": self.predictor.class_names,
            "palette": self.palette.tolist(),
            "task": spec.task,
            "num_classes": spec.num_classes,
            "threshold": self.default_threshold if self.binary else None,
            "input_size": list(spec.input_size),
            "crop_size": list(spec.crop_size) if spec.crop_size else None,
            "backbone": spec.backbone,
            "head": spec.head,
            "downsample_factor": spec.downsample_factor,
            "slide": self.default_slide is not None,
            "tta": self.predictor.options.tta,
            "device": str(self.predictor.device),
        }
