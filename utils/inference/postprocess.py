"""From network outputs to class maps at the image's size, without class probabilities on the full canvas.

The result is defined as "bilinear probabilities at the output size (``align_corners=False``,
the coordinates of ``F.interpolate`` and ``cv2.resize``), then argmax", or for a one-channel
(binary) model "bilinear probability, then the binary rule" (:func:`nets.task.foreground`).
:func:`upsample_labels` computes exactly that while never holding ``C x H x W`` values:

- bilinear interpolation is a convex combination of the 4 neighbouring source pixels, so where
  all 4 neighbours of an output pixel have the same argmax class k, the interpolated argmax is
  k too (``p_k >= p_j`` at each corner, hence in the weighted sum; ties aside). The same holds
  for a threshold on one channel;
- so the low-resolution labels are expanded to the output size by index gathering, and the
  interpolated probabilities are computed only for output pixels whose neighbours disagree
  (the class borders, a few percent of the pixels), in bounded chunks;
- the argmax of logits is the argmax of their softmax, so given logits only the corners of
  those border cells are softmaxed, not the whole map.

Memory is the output's labels plus small index arrays. :func:`average_upsampled_labels` is
the probability path for test-time augmentation (a mean over maps of different sizes has no
shared cells): it interpolates and sums them a band of output rows at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import NamedTuple

import numpy as np
import torch

from nets.task import DEFAULT_THRESHOLD, foreground

CHUNK_VALUES = 1 << 22  # floats per work array (16 MB): bounds memory on any image size
_MIN_CELLS = 1 << 10  # disagreeing cells below which a share of the refinement is not worth a thread
_MIN_VALUES = 1 << 16  # probabilities below which a share of the argmax is not worth a thread


class Taps(NamedTuple):
    """Bilinear source taps along one axis: output i reads ``first[i]`` with weight ``1 - frac[i]``
    and ``second[i]`` with weight ``frac[i]``."""

    first: np.ndarray
    second: np.ndarray
    frac: np.ndarray


def bilinear_taps(source: int, target: int) -> Taps:
    """Source indices and weights of bilinear resizing ``source`` -> ``target`` samples, ``align_corners=False``.

    Float32 arithmetic as in PyTorch's CPU kernel: ``src = (i + 0.5) * (source / target) - 0.5``,
    clamped at 0; the second tap is clamped to the last sample (cv2.resize's rule too).
    """
    scale = np.float32(source) / np.float32(target)
    src = (np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    np.maximum(src, 0, out=src)
    first = np.minimum(np.floor(src).astype(np.int64), source - 1)
    frac = np.clip(src - first.astype(np.float32), 0, 1).astype(np.float32)
    second = first + (first < source - 1)
    return Taps(first, second, frac)


def _labels(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Labels of (..., C) probabilities: argmax over C, or ``p >= threshold`` for one channel."""
    if probs.shape[-1] == 1:
        return foreground(probs[..., 0], threshold).astype(np.uint8)
    return probs.argmax(-1).astype(np.uint8)


def _expand(grid: np.ndarray, row_count: np.ndarray, col_count: np.ndarray) -> np.ndarray:
    """``grid[rows.first][:, cols.first]`` from the use counts of :func:`_runs`: repeating source
    rows/columns is several times faster than fancy indexing, and exact because the taps never
    decrease."""
    return np.repeat(np.repeat(grid, row_count, axis=0), col_count, axis=1)


def _disagreeing_cells(labels: np.ndarray) -> np.ndarray:
    """(h, w) bool: the cell whose top-left sample is (i, j) (samples i..i+1 x j..j+1, clipped at
    the border) holds more than one label."""
    h, w = labels.shape
    down = np.zeros((h, w + 1), dtype=bool)
    down[:h - 1, :w] = labels[:-1] != labels[1:]
    right = np.zeros((h + 1, w), dtype=bool)
    right[:h, :w - 1] = labels[:, :-1] != labels[:, 1:]
    return down[:, :w] | down[:, 1:] | right[:h] | right[1:]


def _pixel_major(hwc: np.ndarray) -> bool:
    """Whether each pixel's C values are adjacent and rows are a whole number of pixels apart, as in
    channels-last network outputs, also when cropped (what :class:`_PixelTable` reads)."""
    pixel = hwc.strides[1]
    return (hwc.shape[2] == 1 or hwc.strides[2] == hwc.itemsize) and pixel == hwc.shape[2] * hwc.itemsize \
        and hwc.strides[0] % pixel == 0 and hwc.strides[0] >= hwc.shape[1] * pixel


def _as_hwc(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, h, w) probabilities as a float32 (h, w, C) host array laid out pixel-major (:func:`_pixel_major`):
    a view of channels-last network outputs, else one pixel-major copy.

    Every later step reads a pixel's C values together; on channel-major maps (ONNX Runtime's
    NCHW output) the argmax and the corner gathers would be slower than this one copy."""
    if isinstance(probs, torch.Tensor):
        hwc = probs.detach().permute(1, 2, 0).to("cpu", torch.float32)
        view = hwc.numpy()
        return view if _pixel_major(view) else hwc.contiguous().numpy()  # torch's copy runs on all cores
    hwc = probs.transpose(1, 2, 0).astype(np.float32, copy=False)
    return hwc if _pixel_major(hwc) else np.ascontiguousarray(hwc)


def _on_all_cores(work: Callable[[slice], None], total: int, least: int, most: int) -> None:
    """``work(piece)`` over slices covering ``range(total)``, each at least ``least`` (unless that is
    all) and at most ``most`` long, spread over the cores when there is enough to share (numpy's
    loops and gathers release the GIL)."""
    workers = os.cpu_count() or 1
    step = max(1, min(most, max(least, -(-total // workers))))
    pieces = [slice(begin, min(begin + step, total)) for begin in range(0, total, step)]
    if workers < 2 or len(pieces) < 2:
        for piece in pieces:
            work(piece)
        return
    with ThreadPoolExecutor(min(workers, len(pieces))) as pool:
        list(pool.map(work, pieces))


def _runs(first: np.ndarray, source: int) -> tuple[np.ndarray, np.ndarray]:
    """For each source sample, the first output index whose first tap it is, and how many there are
    (0 when downsampling skips it); the taps never decrease, so each such range is contiguous."""
    counts = np.bincount(first, minlength=source)
    return np.cumsum(counts) - counts, counts


def _inner_max(counts: np.ndarray) -> int:
    """The largest of the use counts of :func:`_runs` leaving out the first and last sample."""
    return int(counts[1:-1].max()) if counts.size > 2 else int(counts.max())


def upsample_labels(scores: torch.Tensor | np.ndarray, size: tuple[int, int], threshold: float = DEFAULT_THRESHOLD,
                    chunk: int = CHUNK_VALUES, logits: bool = False) -> np.ndarray:
    """Class map (H, W) uint8 of (C, h, w) probabilities resized bilinearly to ``size`` = (H, W).

    Equal to ``F.interpolate(probs[None], size, mode="bilinear", align_corners=False)[0]`` followed
    by argmax over C (or ``>= threshold`` when C is 1), except where classes tie; see the module
    docstring. Works for up- and downsampling (bilinear without antialias). ``scores`` may be on
    any device; the work is done on the host, on all cores, with at most about ``chunk`` floats per
    work array in each thread.

    With ``logits``, ``scores`` are the logits whose softmax (sigmoid for one channel) are the
    probabilities: the argmax is the same, so only the corners of the disagreeing cells are
    turned into probabilities, which saves the softmax over the whole map.
    """
    hwc = _as_hwc(scores)
    h, w, channels = hwc.shape
    height, width = int(size[0]), int(size[1])
    if channels > 256:
        raise ValueError(f"uint8 class maps hold at most 256 classes; got {channels} channels")
    if logits and channels == 1:
        hwc, logits = torch.from_numpy(hwc).sigmoid().numpy(), False  # one channel: cheap, and thresholds are on p
    labels = np.empty((h, w), dtype=np.uint8)

    def label_rows(rows: slice) -> None:
        labels[rows] = _labels(hwc[rows], threshold)

    _on_all_cores(label_rows, h, max(1, _MIN_VALUES // max(w * channels, 1)), h)
    if (h, w) == (height, width):
        return labels
    rows, cols = bilinear_taps(h, height), bilinear_taps(w, width)
    row_start, row_count = _runs(rows.first, h)
    col_start, col_count = _runs(cols.first, w)
    out = _expand(labels, row_count, col_count)
    flat_out = out.reshape(-1)
    cell_rows, cell_cols = np.nonzero(_disagreeing_cells(labels))
    # Each cell covers a rectangle of output pixels (the pixels whose top-left tap it is): the
    # exact bilinear argmax is recomputed there, a bounded number of cells at a time.
    covered = (row_count[cell_rows] > 0) & (col_count[cell_cols] > 0)
    cell_rows, cell_cols = cell_rows[covered], cell_cols[covered]
    pixels = _PixelTable(hwc)

    def refine(i: np.ndarray, j: np.ndarray, tall: int, wide: int, piece: slice) -> None:
        i, j = i[piece], j[piece]
        # Each cell's output rows and columns, padded to tall x wide by repeating its last one:
        # a padding entry is a real pixel of the cell, rewritten with the same value.
        ys = row_start[i][:, None] + np.minimum(np.arange(tall), row_count[i][:, None] - 1)  # (n, tall)
        xs = col_start[j][:, None] + np.minimum(np.arange(wide), col_count[j][:, None] - 1)  # (n, wide)
        winners = _Cells(pixels, labels, i, j, threshold, logits).labels(rows.frac[ys], cols.frac[xs])
        # Cells cover disjoint rectangles, so pieces running at once never write the same pixel.
        flat_out[(ys * width)[:, :, None] + xs[:, None, :]] = winners

    # Clamping at the borders gives the first and last source rows (columns) more output rows than
    # the others (6 against 3-4 at 288 -> 1080): those cells are padded apart, not all of them.
    inner_tall, inner_wide = _inner_max(row_count), _inner_max(col_count)
    border = (row_count[cell_rows] > inner_tall) | (col_count[cell_cols] > inner_wide)
    for chosen, tall, wide in ((~border, inner_tall, inner_wide), (border, row_count.max(), col_count.max())):
        i, j = cell_rows[chosen], cell_cols[chosen]
        _on_all_cores(partial(refine, i, j, int(tall), int(wide)), i.size, _MIN_CELLS,
                      max(1, chunk // ((4 + tall * wide) * channels)))
    return out


class _PixelTable:
    """The (h, w, C) map as a table of pixel rows, for gathering the C values of many pixels at once.

    ``hwc`` is pixel-major (:func:`_as_hwc` makes it so): pixels of C contiguous floats with a fixed
    row pitch, so a strided 2-D view over them (pixel ``(i, j)`` at row ``i * pitch + j``) is gathered
    with one ``take`` instead of a copy of the map or a slower 2-D fancy index.
    """

    def __init__(self, hwc: np.ndarray) -> None:
        h, w, channels = hwc.shape
        pixel = hwc.strides[1]
        self.pitch = hwc.strides[0] // pixel
        self.table = np.lib.stride_tricks.as_strided(hwc, ((h - 1) * self.pitch + w, channels),
                                                     (pixel, hwc.itemsize), writeable=False)
        self.height, self.width = h, w

    def gather(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Values (*i.shape, C) of pixels ``(i, j)``."""
        return self.table.take(i * self.pitch + j, axis=0)


class _Cells:
    """Disagreeing cells (top-left samples ``(i, j)``): their 4 corner probabilities, kept only for
    the classes that can win somewhere in the cell, in groups of cells with the same number of
    candidates (``groups``: positions, candidate classes (m, k), corner values (4, m, k)).

    A class j whose largest corner probability is below some class k's smallest one can win at
    no point of the cell (``p_j(x) <= max p_j < min p_k <= p_k(x)``), so it is dropped. At a
    class border that leaves 2-3 classes of 21, which is what makes the exact refinement cheap.
    Every corner's own argmax class can win (at that corner), so a cell with two candidates has
    exactly the two labels its corners show: that common case needs no sorting.
    """

    def __init__(self, pixels: _PixelTable, labels: np.ndarray, i: np.ndarray, j: np.ndarray,
                 threshold: float, logits: bool = False) -> None:
        below, right = np.minimum(i + 1, pixels.height - 1), np.minimum(j + 1, pixels.width - 1)
        ci, cj = np.stack([i, i, below, below]), np.stack([j, right, j, right])  # (4, n) corner positions
        corners = pixels.gather(ci, cj)  # (4, n, C)
        if logits:
            corners = torch.from_numpy(corners).softmax(-1).numpy()  # the probabilities a full softmax gives
        channels = corners.shape[-1]
        self.threshold, self.binary = threshold, channels == 1
        if channels == 1:
            self.groups = [(np.arange(i.size), np.zeros((i.size, 1), dtype=np.uint8), corners)]
            return
        # The corner axis comes first, so these reductions are elementwise over contiguous rows.
        possible = corners.max(0) >= corners.min(0).max(-1, keepdims=True)  # (n, C)
        count = possible.sum(-1)
        two = np.flatnonzero(count == 2)
        shown = labels[ci[:, two], cj[:, two]]
        pair = np.stack([shown.min(0), shown.max(0)], axis=1)  # lowest class first: ties go to it
        values = np.stack([corners[:, two, pair[:, 0]], corners[:, two, pair[:, 1]]], axis=-1)  # (4, m, 2)
        self.groups = [(two, pair, values)]
        rest = np.flatnonzero(count != 2)
        if rest.size:
            possible, corners = possible[rest], corners[:, rest]
            # Classes that can win first (in class order, so ties still go to the lowest class).
            classes = np.argsort(~possible, axis=-1, kind="stable").astype(np.uint8)
            values = np.take_along_axis(corners, classes[None].astype(np.int64), axis=2)
            # Padding entries are classes that cannot win: a probability of -1 keeps them out of the argmax.
            values[:, ~np.take_along_axis(possible, classes.astype(np.int64), axis=-1)] = -1
            # Grouped by candidate count rounded up to a power of two, to work on few columns.
            width = np.minimum(channels, 1 << np.ceil(np.log2(np.maximum(count[rest], 1))).astype(np.int64))
            for k in np.unique(width):
                chosen = np.flatnonzero(width == k)
                self.groups.append((rest[chosen], classes[chosen, :k], values[:, chosen, :k]))

    def labels(self, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
        """Labels (n, tall, wide) of each cell's output pixels, from their row weights ``fy`` (n, tall)
        and column weights ``fx`` (n, wide)."""
        result = np.empty((fy.shape[0], fy.shape[1], fx.shape[1]), dtype=np.uint8)
        for where, classes, values in self.groups:
            if where.size:
                result[where] = self._argmax(classes, values, fy[where], fx[where])
        return result

    def _argmax(self, classes: np.ndarray, values: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
        """Bilinear value per pixel in PyTorch's order of operations, then the winning class."""
        v = values[:, :, None, None, :]  # (4, n, 1, 1, k)
        gy, gx = (1 - fy)[:, :, None, None], (1 - fx)[:, None, :, None]
        fy, fx = fy[:, :, None, None], fx[:, None, :, None]
        # The column mix of each corner row does not depend on the output row: computed once per column.
        top, bottom = gx * v[0] + fx * v[1], gx * v[2] + fx * v[3]  # (n, 1, wide, k)
        value = gy * top + fy * bottom  # (n, tall, wide, k)
        if self.binary:
            return foreground(value[..., 0], self.threshold).astype(np.uint8)
        if value.shape[-1] == 2:
            return np.where(value[..., 1] > value[..., 0], classes[:, None, None, 1], classes[:, None, None, 0])
        winner = value.argmax(-1)
        return np.take_along_axis(classes[:, None, None, :], winner[..., None], axis=-1)[..., 0]


def average_upsampled_labels(maps: Sequence[torch.Tensor | np.ndarray], size: tuple[int, int],
                             threshold: float = DEFAULT_THRESHOLD, chunk: int = CHUNK_VALUES) -> np.ndarray:
    """Class map (H, W) uint8 of the mean of several (C, h_i, w_i) probability maps, each resized
    bilinearly to ``size`` (test-time augmentation), computed a band of output rows at a time."""
    if not maps:
        raise ValueError("average_upsampled_labels needs at least one map")
    height, width = int(size[0]), int(size[1])
    sources = [_as_hwc(m) for m in maps]
    channels = sources[0].shape[2]
    taps = [(bilinear_taps(s.shape[0], height), bilinear_taps(s.shape[1], width)) for s in sources]
    out = np.empty((height, width), dtype=np.uint8)
    band = max(1, chunk // (width * channels))
    for top in range(0, height, band):
        ys = np.arange(top, min(top + band, height))
        total = np.zeros((ys.size, width, channels), dtype=np.float32)
        for source, (rows, cols) in zip(sources, taps, strict=True):
            fy = rows.frac[ys, None, None]
            # Rows first: (band, w, C) is smaller than (band, W, C) when enlarging.
            mixed = (1 - fy) * source[rows.first[ys]] + fy * source[rows.second[ys]]
            fx = cols.frac[None, :, None]
            total += (1 - fx) * mixed[:, cols.first] + fx * mixed[:, cols.second]
        out[top:top + ys.size] = _labels(total / len(sources), threshold)
    return out


def labels_and_prob(probs: torch.Tensor, threshold: float = DEFAULT_THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    """Class index per pixel (uint8) and its probability map, from (C, H, W) probabilities at full size.

    One channel is a binary model's foreground probability: the label is 1 where it reaches
    ``threshold``, and the map is that foreground probability. With C >= 2 the label is the
    most probable class and the map that class's probability (both from one ``max`` pass, over the
    tensor's memory order: ``argmax`` over a non-innermost dim is ~3x slower on the CPU).
    """
    if probs.shape[0] == 1:
        return foreground(probs[0], threshold).to(torch.uint8), probs[0]
    hwc = probs.permute(1, 2, 0)
    values, indices = hwc.max(-1) if hwc.is_contiguous() else probs.max(0)
    return indices.to(torch.uint8), values
