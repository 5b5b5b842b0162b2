"""How raw pixels become network input: 8-bit /255, or per-channel ``(x - mean) / std``, and the padding value.

A :class:`Normalization` is read from a model's spec (:attr:`~nets.spec.ModelSpec.mean` /
:attr:`~nets.spec.ModelSpec.std`). Without statistics it is today's 8-bit rule (divide by 255,
pad with grey 128), so the released weights behave exactly as before; with them, any dtype
(uint8, uint16, int16, float32) is centred and scaled per channel, and canvases are padded with
the mean, the value that normalises to 0. Training (:func:`utils.data.loader.to_device`) and
inference (:meth:`utils.inference.engine.Engine.to_batch`) both apply it on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# The letterbox grey of 8-bit input (see utils.data.transforms).
GREY = 128
# Image dtypes the toolkit reads and normalises.
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``mean`` and ``std`` in the file's units, or neither (8-bit input divided by 255)."""

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std go together: give both or neither")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} values but std {len(self.std)}: one per channel each")

    @classmethod
    def of(cls, spec) -> Normalization:
        """The normalisation a :class:`~nets.spec.ModelSpec` records."""
        return cls(spec.mean, spec.std)

    @property
    def scaled(self) -> bool:
        """True for per-channel statistics, False for the 8-bit /255 rule."""
        return self.mean is not None

    def fill(self, channels: int, dtype: np.dtype | type) -> int | np.ndarray:
        """The padding value of a ``dtype`` canvas: grey 128 for /255, else the mean per channel (rounded and
        clipped to the dtype for integer images), which normalises to (about) 0."""
        if self.mean is None:
            return GREY
        mean = np.asarray(self.mean, dtype=np.float64)
        if mean.size != channels:
            raise ValueError(f"the normalisation has {mean.size} channels, the image {channels}")
        dtype = np.dtype(dtype)
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            mean = np.clip(np.rint(mean), info.min, info.max)
        return mean.astype(dtype)

    def apply(self, batch: torch.Tensor) -> torch.Tensor:
        """A float32 (N, C, H, W) batch of any integer or float dtype, normalised (a new tensor)."""
        if self.mean is None or self.std is None:
            return batch.float().div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=batch.device).view(1, -1, 1, 1)
        return batch.float().sub_(mean).div_(std)
