"""The sliding-window grid of a whole scene, cut into blocks that are read, predicted and written one at a time.

The windows are those :func:`utils.inference.slide.window_starts` lays over the whole scene
(mmsegmentation's layout). The scene is split into *cores*, rectangles of at most ``block`` pixels
a side that tile it exactly. A block reads the *region* covered by every scene window that touches
its core, runs exactly those windows (:func:`utils.inference.slide.slide_rows` with explicit
starts) and keeps the core. Each core pixel thus averages the same windows, in the same order, as
the in-memory sliding window over the whole scene, and gets the same label; the windows that
straddle two cores run once for each, about ``(1 + window / block)^2 - 1`` extra forward passes
(27% for 512 windows and 4096 blocks). Memory is bounded by the region: block + window a side.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from utils.inference.slide import window_starts

# Output tiles, and the granularity of block sides, so that every block writes whole tiles.
TILE = 256
# The most bytes of scene samples a block region may hold (the samples of one region, before the network).
REGION_BYTES = 192 * 2**20
MAX_BLOCK = 4096


@dataclass(frozen=True)
class Block:
    """One block: the core rows/columns it writes, the region it reads, and its windows' starts in the region."""

    core_rows: tuple[int, int]
    core_cols: tuple[int, int]
    region_rows: tuple[int, int]
    region_cols: tuple[int, int]
    ys: list[int]
    xs: list[int]

    @property
    def windows(self) -> int:
        return len(self.ys) * len(self.xs)


def block_side(bands: int, itemsize: int, window: tuple[int, int]) -> int:
    """The default core side: regions of at most :data:`REGION_BYTES` samples, a multiple of :data:`TILE`,
    between two windows and :data:`MAX_BLOCK` pixels."""
    side = math.isqrt(REGION_BYTES // max(1, bands * itemsize)) - max(window)
    side = min(MAX_BLOCK, side) // TILE * TILE
    return max(side, -(-2 * max(window) // TILE) * TILE)


def _axis(length: int, window: int, stride: int, block: int) -> Iterator[tuple[tuple[int, int], tuple[int, int],
                                                                               list[int]]]:
    """(core, region, window starts relative to the region) along one axis of ``length`` pixels.

    A scene shorter than a window has one window at 0, padded by the sliding window itself.
    """
    starts = window_starts(max(length, window), window, stride)
    for core_start in range(0, length, block):
        core_stop = min(core_start + block, length)
        touching = [s for s in starts if s < core_stop and s + window > core_start]
        first = touching[0]
        yield (core_start, core_stop), (first, min(touching[-1] + window, length)), [s - first for s in touching]


def plan_blocks(height: int, width: int, window: tuple[int, int], stride: tuple[int, int],
                block: int) -> list[Block]:
    """The blocks of a ``height`` x ``width`` scene, row by row (see the module docstring)."""
    if block < 1:
        raise ValueError(f"block must be at least 1 pixel; got {block}")
    rows = list(_axis(height, window[0], stride[0], block))
    cols = list(_axis(width, window[1], stride[1], block))
    return [Block(core_r, core_c, region_r, region_c, ys, xs)
            for core_r, region_r, ys in rows for core_c, region_c, xs in cols]
