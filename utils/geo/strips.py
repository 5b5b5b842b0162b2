"""The sliding-window grid of a whole scene, cut into column strips that are read, predicted and written in turn.

The windows are those :func:`utils.inference.slide.window_starts` lays over the whole scene
(mmsegmentation's layout). The scene's columns are split into *cores*, ranges of at most
``width`` columns that tile it exactly; a strip is a core and every row of the scene. A strip reads
the columns of every scene window that touches its core (its *region*), one row of windows at a
time, runs exactly those windows (:func:`utils.inference.slide.slide_rows` with explicit starts)
and keeps the core. Each core pixel thus averages the same windows, in the same order, as the
in-memory sliding window over the whole scene, and gets the same label.

Memory is bounded by the strip's width, never by the scene's height: the accumulator is one window
high (classes x window x region width, float32) and the samples one row of windows. Only the
windows that straddle two cores run twice, about ``window / width`` of a row's windows per extra
strip (one or two windows per border): rows never repeat, so the time stays linear in the pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from utils.inference.slide import window_starts

# Output tiles, and the granularity of strip widths, so that no output tile spans two strips.
TILE = 256
# The bytes a strip's working set may take: its accumulator, the averaged band and its labels
# (about three float32 maps of classes x window height per column), and one row of windows' samples.
STRIP_BYTES = 192 * 2**20


@dataclass(frozen=True)
class Strip:
    """One strip: the core columns it writes, the columns it reads, and its windows' column starts in them."""

    core_cols: tuple[int, int]
    region_cols: tuple[int, int]
    xs: list[int]


def strip_width(classes: int, bands: int, itemsize: int, window: tuple[int, int]) -> int:
    """The default core width: a working set of at most :data:`STRIP_BYTES`, a multiple of :data:`TILE`, at
    least two windows wide."""
    per_column = window[0] * (3 * 4 * classes + bands * itemsize + 1)
    width = (STRIP_BYTES // per_column - window[1]) // TILE * TILE
    return max(width, -(-2 * window[1] // TILE) * TILE)


def _axis(length: int, window: int, stride: int, core: int) -> Iterator[tuple[tuple[int, int], tuple[int, int],
                                                                               list[int]]]:
    """(core, region, window starts relative to the region) along one axis of ``length`` pixels.

    A scene shorter than a window has one window at 0, padded by the sliding window itself.
    """
    starts = window_starts(max(length, window), window, stride)
    for core_start in range(0, length, core):
        core_stop = min(core_start + core, length)
        touching = [s for s in starts if s < core_stop and s + window > core_start]
        first = touching[0]
        yield (core_start, core_stop), (first, min(touching[-1] + window, length)), [s - first for s in touching]


def plan_strips(width: int, window: int, stride: int, strip: int) -> list[Strip]:
    """The strips of a scene ``width`` columns wide, left to right (see the module docstring), for windows
    ``window`` columns wide laid ``stride`` apart."""
    if strip < 1:
        raise ValueError(f"strip width must be at least 1 pixel; got {strip}")
    return [Strip(core, region, xs) for core, region, xs in _axis(width, window, stride, strip)]
