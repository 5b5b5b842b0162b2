"""Per-band mean and standard deviation of a split's images, in bounded memory.

train.py records them in the model's spec for data that is not 8-bit RGB (:mod:`utils.data.normalize`).
Each image is read once and folded in a band of rows at a time: per band the pixel count, mean and
sum of squared deviations in float64, merged with the pairwise update of Chan, Golub and LeVeque,
which stays exact where plain sums of squares of 16-bit values would lose digits. Memory is one image
plus one float64 band of rows, whatever the split's size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tqdm import tqdm

# Rows folded at a time: bounds the float64 copy to ROWS x width x bands.
ROWS = 256


class RunningMoments:
    """Count, mean and sum of squared deviations per channel of everything :meth:`add` has seen."""

    def __init__(self, channels: int) -> None:
        self.count = 0
        self.mean = np.zeros(channels, dtype=np.float64)
        self.m2 = np.zeros(channels, dtype=np.float64)

    def add(self, pixels: np.ndarray) -> None:
        """Fold in (N, C) or (H, W, C) pixels."""
        values = pixels.reshape(-1, pixels.shape[-1]).astype(np.float64)
        count = values.shape[0]
        if count == 0:
            return
        mean = values.mean(axis=0)
        m2 = ((values - mean) ** 2).sum(axis=0)
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * count / total)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation per channel (0 before any pixel)."""
        return np.sqrt(self.m2 / max(self.count, 1))


Stats = tuple[tuple[float, ...], tuple[float, ...]]


def band_statistics(read: Callable[[int], tuple[np.ndarray, np.ndarray | None]], indices: Sequence[int],
                    channels: int, progress: bool = True, desc: str = "band statistics") -> Stats:
    """Mean and std per channel over the valid pixels of the images of ``indices``, with a progress bar.

    ``read(i)`` gives ``(image (H, W, C), valid (H, W) bool or None for all)``: nodata pixels (a nodata
    value, a mask, an alpha band) are left out, so that the fill value of a scene's edges does not drag
    the statistics. A channel that never varies gets std 1 (it then only shifts the input), since a std
    of 0 cannot scale anything.
    """
    moments = RunningMoments(channels)
    for index in tqdm(indices, desc=desc, unit="img", disable=not progress):
        image, valid = read(index)
        for top in range(0, image.shape[0], ROWS):
            rows = image[top:top + ROWS]
            moments.add(rows if valid is None else rows[valid[top:top + ROWS]])
    std = moments.std
    std = np.where(std > 0, std, 1.0)
    return tuple(float(v) for v in moments.mean), tuple(float(v) for v in std)
