"""The engine both inference strategies share: raw canvases in, the backend's outputs and probabilities out.

Canvases are (H, W, C) arrays of uint8, uint16, int16 or float32; :meth:`Engine.to_batch` applies the
model's :class:`~utils.data.normalize.Normalization` (8-bit /255, or per-channel statistics) on the
device, and :attr:`Engine.fill` is the value that pads them (the letterbox, the slide canvas).

:mod:`utils.inference.whole` (letterbox the image to the input size) and
:mod:`utils.inference.slide` (windows of the input size at native resolution) are two strategies
over one :class:`Engine`, like mmsegmentation's ``whole`` and ``slide`` test modes; the
:class:`~utils.inference.predictor.Predictor` picks one. Neither strategy knows the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from nets.task import DEFAULT_THRESHOLD, Task
from utils.data.normalize import Normalization


class Engine:
    """A forward pass with the task's reading of its outputs.

    Args:
        backend: normalised float batch (N, C_in, H, W) -> float32 outputs (N, C, H, W)
            (:mod:`utils.inference.backends`); a binary ONNX export returns probabilities
            (``backend.outputs_probabilities``), every other backend logits.
        task: the model's :class:`~nets.task.Task`.
        input_size: the network input (H, W): the letterbox size, or the window.
        batch_size: canvases per forward pass.
        threshold: a binary model's decision threshold (None: the task's default).
        normalization: how canvases become input (None: 8-bit /255).
        channels: the backend's output channels when known (the sliding window needs them to give
            pixels that no window ran for).
    """

    def __init__(self, backend: Callable[[torch.Tensor], torch.Tensor], task: Task, input_size: tuple[int, int],
                 batch_size: int = 4, threshold: float | None = None,
                 normalization: Normalization | None = None, channels: int | None = None) -> None:
        self.backend = backend
        self.task = task
        self.input_size = input_size
        self.batch_size = max(1, int(batch_size))
        self.threshold = float(DEFAULT_THRESHOLD if threshold is None else threshold)
        self.device: torch.device = backend.device
        self.outputs_probabilities = bool(getattr(backend, "outputs_probabilities", False))
        self.normalization = normalization or Normalization()
        self.channels = channels

    def fill(self, image: np.ndarray) -> int | np.ndarray:
        """The padding value of canvases for ``image`` (H, W, C): grey 128 for /255, else the mean per channel."""
        return self.normalization.fill(image.shape[2], image.dtype)

    def to_batch(self, canvases: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack (H, W, C) canvases of one size into a normalised float (N, C, H, W) batch on the device."""
        batch = torch.from_numpy(np.stack(canvases)).to(self.device, non_blocking=True)
        return self.normalization.apply(batch.permute(0, 3, 1, 2))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The backend's outputs of a batch (logits, or probabilities when :attr:`outputs_probabilities`)."""
        return self.backend(batch)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch of backend outputs (softmax, or sigmoid for one channel)."""
        return outputs if self.outputs_probabilities else self.task.activation(outputs)
