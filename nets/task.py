"""What a model's outputs mean: the task object (multi-class now, binary, room for multi-label).

A task answers every question that depends on it, so no other code tests channel counts or
names: how many output channels ``num_classes`` classes need, which activation turns logits into
probabilities, the decision rule that turns probabilities into labels (with its default
threshold), and the loss mode of :func:`nets.losses.build_criterion`.

- ``multiclass``: one logit per class, softmax, argmax.
- ``binary``: two classes (background, foreground) read from one logit through a sigmoid; a pixel
  is foreground where the probability reaches the threshold (:func:`foreground`).

A multi-label task (one sigmoid per class, each thresholded) would be a third :class:`Task`
subclass registered in :data:`TASKS`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

# The decision threshold of a binary model before validation has chosen one.
DEFAULT_THRESHOLD = 0.5


def foreground(prob: Any, threshold: float) -> Any:
    """The binary decision rule, for NumPy arrays and tensors alike: foreground where ``prob >= threshold``."""
    return prob >= threshold


class Task:
    """Base class; see the module docstring. Instances are stateless singletons (:data:`TASKS`)."""

    name: ClassVar[str]
    # Whether labels come from a threshold on probabilities (binary, multi-label) rather than an argmax.
    thresholded: ClassVar[bool]
    default_threshold: ClassVar[float | None]

    @property
    def loss_mode(self) -> str:
        """The ``mode`` of :func:`nets.losses.build_criterion` for this task."""
        return self.name

    def output_channels(self, num_classes: int) -> int:
        raise NotImplementedError

    def num_classes(self, channels: int) -> int:
        """The class count of a model with ``channels`` output channels."""
        raise NotImplementedError

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Probabilities of logits ``(N, C, H, W)``."""
        raise NotImplementedError

    def labels(self, probs: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        """uint8 labels ``(N, H, W)`` of probabilities ``(N, C, H, W)`` by the task's decision rule."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<task {self.name}>"


class MulticlassTask(Task):
    name = "multiclass"
    thresholded = False
    default_threshold = None

    def output_channels(self, num_classes: int) -> int:
        return num_classes

    def num_classes(self, channels: int) -> int:
        return channels

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        # Channels-last logits (the CPU/CUDA inference layout) are reduced over their innermost
        # dimension, 2-3x faster than softmax(1) on the strided layout or a copy to NCHW.
        if logits.stride(1) == 1 and logits.shape[1] > 1:
            return logits.permute(0, 2, 3, 1).softmax(-1).permute(0, 3, 1, 2)
        return logits.softmax(1)

    def labels(self, probs: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        return probs.argmax(1).to(torch.uint8)


class BinaryTask(Task):
    name = "binary"
    thresholded = True
    default_threshold = DEFAULT_THRESHOLD

    def output_channels(self, num_classes: int) -> int:
        if num_classes != 2:
            raise ValueError(f"a binary model has 2 classes (background, foreground); got {num_classes}")
        return 1

    def num_classes(self, channels: int) -> int:
        return 2

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def labels(self, probs: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
        limit = self.default_threshold if threshold is None else threshold
        return foreground(probs[:, 0], limit).to(torch.uint8)


MULTICLASS = MulticlassTask()
BINARY = BinaryTask()
TASKS: dict[str, Task] = {task.name: task for task in (MULTICLASS, BINARY)}


def get_task(name: str | Task) -> Task:
    """The task called ``name`` (a Task passes through); a ValueError that lists the tasks otherwise."""
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"task must be one of {', '.join(TASKS)}; got {name!r}") from None


def task_for_channels(channels: int) -> Task:
    """The task of a bare weight file with ``channels`` output channels: one channel is binary."""
    return BINARY if channels == 1 else MULTICLASS

