"""The engine both inference strategies share: uint8 canvases in, the backend's outputs and probabilities out.

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


class Engine:
    """A forward pass with the task's reading of its outputs.

    Args:
        backend: float batch (N, C_in, H, W) in [0, 1] -> float32 outputs (N, C, H, W)
            (:mod:`utils.inference.backends`); a binary ONNX export returns probabilities
            (``backend.outputs_probabilities``), every other backend logits.
        task: the model's :class:`~nets.task.Task`.
        input_size: the network input (H, W): the letterbox size, or the window.
        batch_size: canvases per forward pass.
        threshold: a binary model's decision threshold (None: the task's default).
    """

    def __init__(self, backend: Callable[[torch.Tensor], torch.Tensor], task: Task, input_size: tuple[int, int],
                 batch_size: int = 4, threshold: float | None = None) -> None:
        self.backend = backend
        self.task = task
        self.input_size = input_size
        self.batch_size = max(1, int(batch_size))
        self.threshold = float(DEFAULT_THRESHOLD if threshold is None else threshold)
        self.device: torch.device = backend.device
        self.outputs_probabilities = bool(getattr(backend, "outputs_probabilities", False))

    def to_batch(self, canvases: Sequence[np.ndarray]) -> torch.Tensor:
        """Stack uint8 (H, W, C) canvases of one size into a float (N, C, H, W) batch in [0, 1] on the device."""
        batch = torch.from_numpy(np.stack(canvases)).to(self.device, non_blocking=True)
        return batch.permute(0, 3, 1, 2).float().div_(255.0)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """The backend's outputs of a batch (logits, or probabilities when :attr:`outputs_probabilities`)."""
        return self.backend(batch)

    def probabilities(self, outputs: torch.Tensor) -> torch.Tensor:
        """Probabilities of a batch of backend outputs (softmax, or sigmoid for one channel)."""
        return outputs if self.outputs_probabilities else self.task.activation(outputs)
