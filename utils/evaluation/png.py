"""The fast reader of index PNGs (single-channel 8-bit class maps) used when scoring folders.

Three decoders, fastest first, none of which holds the GIL while it works, so a thread pool
scales over the cores: raw inflate for 8-bit PNGs whose rows are unfiltered or filtered with
Sub or Up (our palette PNGs, VOC labels, OpenCV's grey PNGs), OpenCV for other 8-bit grey or
palette PNGs (palettes relabelled as grey in memory), PIL for the rest (it also explains
what is wrong).
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PROBE_ROWS = 16


def read_index_png(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel 8-bit PNG of class indices (grey or palette) as (H, W) uint8.

    Raises ``UserError`` naming the file for colour, 16-bit, unreadable or corrupt files.
    """
    return np.ascontiguousarray(read_index_view(Path(path)))


def read_index_view(path: Path) -> np.ndarray:
    """:func:`read_index_png` without the final copy: the array may be a view with padded rows.

    Three decoders, fastest first, none of which holds the GIL while it works, so a thread
    pool scales over the cores:

    1. 8-bit PNGs whose rows are stored unfiltered (palette PNGs as PIL and most tools write
       them, hence VOC labels and our predictions) or filtered with Sub or Up (grey PNGs as
       OpenCV writes them): raw inflate of the pixel stream, then :func:`_unfilter`. This
       skips zlib's Adler-32 pass over the output, a sizeable share of the decode; the PNG's
       own CRC-32 of every IDAT chunk is checked instead.
    2. Other 8-bit grey or palette PNGs (Average or Paeth rows, as PIL writes grey): OpenCV.
       It expands palettes to colour, so palette files are first relabelled as grey in memory
       (see ``_palette_as_grey``).
    3. Anything else (1/2/4-bit, non-PNG): PIL, which also explains what is wrong.
    """
    try:
        with open(path, "rb", buffering=0) as handle:
            data = handle.readall()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc
    # IHDR sits right after the signature: bit depth at byte 24, colour type at byte 25.
    if data[:8] == _PNG_SIGNATURE and len(data) > 25 and data[24] == 8 and data[25] in (0, 3):
        chunks = _png_chunks(data)
        if chunks is not None:
            array = _inflate_unfiltered(data, chunks)
            if array is not None:
                return array
            png = data if data[25] == 0 else _palette_as_grey(data, chunks)
            array = cv2.imdecode(np.frombuffer(png, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
            if array is not None and array.ndim == 2 and array.dtype == np.uint8:
                return array
    return _read_index_pil(path, data)


def _png_chunks(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """``(type, start, end)`` of each chunk's payload up to IEND, or None if the file is cut short."""
    chunks = []
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            return None
        chunks.append((kind, pos + 8, end))
        if kind == b"IEND":
            return chunks if chunks[0][0] == b"IHDR" and end - chunks[0][1] >= 13 else None
        pos = end + 4
    return None


def _inflate_unfiltered(data: bytes, chunks: list[tuple[bytes, int, int]]) -> np.ndarray | None:
    """The (H, W) pixels of a non-interlaced 8-bit one-channel PNG whose rows are unfiltered or
    filtered with Sub or Up (:func:`_unfilter`).

    Returns None whenever this shortcut does not apply (Average or Paeth rows, interlacing, a bad
    CRC, a damaged stream), and the caller falls back to a full decoder, which reports errors.
    """
    start = chunks[0][1]
    width = int.from_bytes(data[start:start + 4], "big")
    height = int.from_bytes(data[start + 4:start + 8], "big")
    # compression method, filter method and interlace must all be 0 (deflate, adaptive, none).
    # A damaged header must not make us reserve gigabytes: leave odd sizes to the full decoder.
    if data[start + 10:start + 13] != b"\x00\x00\x00" or not 0 < (width + 1) * height <= 2**31:
        return None
    parts = []
    for kind, begin, end in chunks:
        if kind == b"IDAT":
            if zlib.crc32(data[begin - 4:end]) != int.from_bytes(data[end:end + 4], "big"):
                return None
            parts.append(data[begin:end])
    stream = b"".join(parts)
    # A zlib stream: deflate method, no preset dictionary, valid header check.
    if len(stream) < 2 or stream[0] & 0x0F != 8 or stream[1] & 0x20 or ((stream[0] << 8) | stream[1]) % 31:
        return None
    stride = width + 1  # each row is a filter-type byte and then the pixels
    try:
        # Look at the first rows' filter bytes before inflating everything: files with Average or
        # Paeth rows (which only a sequential decoder undoes) go straight to the full decoder. So
        # do grey files whose first rows mix filter types: that is adaptive filtering (PIL's grey
        # PNGs), which nearly always brings Paeth rows further down.
        kinds = set(zlib.decompressobj(-15).decompress(stream[2:], stride * min(height, _PROBE_ROWS))[::stride])
        if max(kinds, default=0) > _UP or (data[start + 9] == 0 and len(kinds) > 1):
            return None
        # One-shot decompress releases the GIL (decompressobj does not); wbits=-15 reads the raw
        # deflate data, leaving out the zlib header and the Adler-32 trailer.
        raw = zlib.decompress(stream[2:], -15, stride * height)
    except zlib.error:
        return None
    if len(raw) != stride * height:
        return None
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, stride)
    return _unfilter(rows[:, 0], rows[:, 1:])


_SUB, _UP = 1, 2  # PNG filter types; 0 is None, 3 Average and 4 Paeth


def _unfilter(kinds: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Pixels of one-byte-per-pixel rows filtered with None, Sub or Up (None for other filters).

    Palette PNGs are stored unfiltered and OpenCV writes grey ones with Sub only. Sub rows are
    running sums along the row and Up rows running sums down the column from the last row that
    is not Up, all modulo 256: OpenCV's integral image does both sums at once.
    """
    if not kinds.any():
        return rows
    if kinds.max() > _UP or rows.size * 255 >= 2**31:  # int32 sums must not overflow
        return None
    height = rows.shape[0]
    decoded = rows
    sub = kinds == _SUB
    if sub.any():
        sums = cv2.integral(rows)
        along = cv2.subtract(sums[1:, 1:], sums[:-1, 1:]).astype(np.uint8)  # running sums along each row
        decoded = along if sub.all() else np.where(sub[:, None], along, rows)
    up = kinds == _UP
    if up.any():
        sums = cv2.integral(decoded)
        down = cv2.subtract(sums[1:, 1:], sums[1:, :-1])  # running sums down each column
        anchor = np.maximum.accumulate(np.where(up, -1, np.arange(height)))
        # An Up row is the column sum from its anchor (the last row that is not Up) down to it.
        base = np.where(anchor[:, None] > 0, down[np.maximum(anchor - 1, 0)], 0)
        decoded = np.where(up[:, None], (down - base).astype(np.uint8), decoded)
    return decoded


def _palette_as_grey(data: bytes, chunks: list[tuple[bytes, int, int]]) -> bytes:
    """The same 8-bit PNG with its colour type set to grey.

    In an 8-bit palette PNG every pixel is stored as its one-byte palette index, exactly like
    an 8-bit grey pixel, so relabelling IHDR (and dropping the palette-only chunks such as
    PLTE and tRNS) makes any PNG decoder return the indices themselves. Only this in-memory
    copy is changed.
    """
    out = [data[:8]]
    for kind, begin, end in chunks:
        if kind == b"IHDR":
            body = data[begin:begin + 9] + b"\x00" + data[begin + 10:end]
            out.append(data[begin - 8:begin] + body + zlib.crc32(kind + body).to_bytes(4, "big"))
        elif kind in (b"IDAT", b"IEND"):
            out.append(data[begin - 8:end + 4])
    return b"".join(out)


def _read_index_pil(path: Path, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.mode not in ("L", "P"):
                raise UserError(
                    f"{path} is a {image.mode} image; class maps must be single-channel 8-bit "
                    "(grey or palette) PNGs of class indices"
                )
            return np.array(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"cannot decode {path}: {exc}") from exc
