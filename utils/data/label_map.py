"""Label value remapping applied as label files are read (``--label-map``), so files are never rewritten.

A map is given either inline, ``SRC:DST[,SRC:DST...]``, or as a file with one ``SRC DST`` pair per line
(``#`` starts a comment). ``*`` as the source sets the value of every label value the map does not name,
e.g. ``3:1,*:0`` keeps only class 3, as 1. Values not named (and no ``*``) keep their value. The result
is a 256-entry lookup table, so applying a map is one indexing pass over a uint8 label.

Typical maps: ``255:1`` for 0/255 binary masks (255 would otherwise be the ignore value), a class-id
table such as Cityscapes' labelIds to trainIds (``utils/data/label_maps/``), or merging classes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from utils.data.io import load_label
from utils.errors import UserError

# Label files read by check_unmapped_binary: enough to recognise a 0/255 dataset, cheap at start-up.
BINARY_SAMPLE = 16


@dataclass(frozen=True)
class LabelMap:
    """A label value lookup table built by :func:`parse_label_map`.

    Attributes:
        pairs: the explicit ``(src, dst)`` pairs, in the order given.
        default: the value for every source not in ``pairs`` (``*``), or None to keep it.
        source: the text or file the map came from, for messages and the checkpoint config.
    """

    pairs: tuple[tuple[int, int], ...]
    default: int | None = None
    source: str = ""

    @cached_property
    def lut(self) -> np.ndarray:
        """uint8 table of 256 entries (read-only, built once): ``lut[value]`` is the mapped value."""
        table = np.arange(256, dtype=np.uint8) if self.default is None else np.full(256, self.default, np.uint8)
        for src, dst in self.pairs:
            table[src] = dst
        table.flags.writeable = False
        return table

    def apply(self, label: np.ndarray) -> np.ndarray:
        """Remap a uint8 label array (any shape); returns a new array."""
        return self.lut[label]

    def spec(self) -> str:
        """The map in inline form, e.g. ``3:1,*:0`` (what the checkpoint config records)."""
        items = [f"{src}:{dst}" for src, dst in self.pairs]
        if self.default is not None:
            items.append(f"*:{self.default}")
        return ",".join(items)


def _value(text: str, what: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 255:
        raise UserError(f"label map {where}: {what} {text!r} is not a label value 0-255. "
                        "Write pairs as SRC:DST (e.g. --label-map 255:1) or one 'SRC DST' per line in a file.")
    return value


def _parse_pairs(items: list[tuple[str, str]], where: str) -> tuple[tuple[tuple[int, int], ...], int | None]:
    pairs: dict[int, int] = {}
    default: int | None = None
    for src_text, dst_text in items:
        dst = _value(dst_text, "target", where)
        if src_text == "*":
            default = dst
            continue
        src = _value(src_text, "source", where)
        if src in pairs and pairs[src] != dst:
            raise UserError(f"label map {where}: value {src} is mapped twice ({pairs[src]} and {dst}); keep one")
        pairs[src] = dst
    if not pairs and default is None:
        raise UserError(f"label map {where} is empty: give at least one SRC:DST pair")
    return tuple(pairs.items()), default


def read_label_map_file(path: str | os.PathLike) -> LabelMap:
    """Read a file of ``SRC DST`` lines (``#`` comments and blank lines allowed)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read label map file {path}: {exc}") from None
    items = []
    for number, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2:
            raise UserError(f"label map {path}, line {number}: expected 'SRC DST', got {line.strip()!r}")
        items.append((fields[0], fields[1]))
    pairs, default = _parse_pairs(items, str(path))
    return LabelMap(pairs, default, str(path))


def parse_label_map(spec: str | os.PathLike | None) -> LabelMap | None:
    """``--label-map`` value: an existing file of ``SRC DST`` lines, or inline ``SRC:DST[,SRC:DST...]``.

    Returns None for None or an empty string (no remapping).
    """
    if spec is None or str(spec).strip() == "":
        return None
    text = str(spec).strip()
    if ":" not in text or Path(text).is_file():
        if Path(text).is_file():
            return read_label_map_file(text)
        raise UserError(f"--label-map {text!r}: no such file, and not of the form SRC:DST[,SRC:DST...] "
                        "(e.g. --label-map 255:1)")
    items = []
    for item in text.split(","):
        parts = item.strip().split(":")
        if len(parts) != 2:
            raise UserError(f"--label-map: {item.strip()!r} is not a SRC:DST pair (e.g. 255:1)")
        items.append((parts[0].strip(), parts[1].strip()))
    pairs, default = _parse_pairs(items, repr(text))
    return LabelMap(pairs, default, text)


def check_unmapped_binary(label_paths: Sequence[Path], label_map: LabelMap | None,
                          sample: int = BINARY_SAMPLE) -> None:
    """Refuse 0/255 masks for a binary model trained without a label map (255 would mean 'ignore').

    Reads up to ``sample`` labels spread evenly over ``label_paths``; raises a one-line
    :class:`UserError` naming ``--label-map 255:1`` when none of them holds a 1 and some hold
    255 with nothing but 0 besides. With a label map nothing is read.
    """
    if label_map is not None or not label_paths:
        return
    step = max(1, len(label_paths) // sample)
    seen: set[int] = set()
    for path in list(label_paths)[::step][:sample]:
        seen |= set(np.unique(load_label(path)).tolist())
    if seen == {0, 255}:
        folder = Path(label_paths[0]).parent
        raise UserError(f"the labels in {folder} hold only the values 0 and 255, and a binary model reads 255 as "
                        "'ignore', so it would learn nothing: add --label-map 255:1 (the files stay unchanged)")
