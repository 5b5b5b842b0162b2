"""predict.py's inputs: files and folders expanded into jobs, and where each job's outputs go.

Two inputs whose outputs would land on the same path are refused up front, so one result
never silently replaces another.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from utils.data.io import IMAGE_EXTENSIONS
from utils.errors import UserError


@dataclass
class Job:
    """One image to segment and where its outputs go (relative to --out)."""

    source: Path
    relative: Path


def find_images(inputs: Sequence[str], out_dir: Path, save_mask: bool = False,
                save_prob: bool = False) -> tuple[list[Job], list[str]]:
    """Expand files and folders (recursively, sorted) into jobs; bad inputs become failure lines.

    Two inputs whose outputs would land on the same path under ``out_dir`` (``a/x.jpg`` and
    ``b/x.jpg`` given as files, or the same file twice; with ``save_mask`` also ``x.jpg`` and
    ``x.png``, whose ``x_mask.png`` coincide, and ``x_prob.png`` with ``save_prob``) are a
    UserError naming both: one result must never silently replace another.
    """
    jobs: list[Job] = []
    failures: list[str] = []
    out_resolved = out_dir.resolve()
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*"))
                     if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                     and not p.resolve().is_relative_to(out_resolved)]
            if not found:
                failures.append(f"folder {path} holds no images ({' '.join(IMAGE_EXTENSIONS)})")
            jobs += [Job(p, p.relative_to(path)) for p in found]
        elif not path.exists():
            failures.append(f"image {path} not found")
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            failures.append(f"{path}: unknown image extension {path.suffix or '(none)'!r}; "
                            f"use one of {' '.join(IMAGE_EXTENSIONS)}")
        else:
            jobs.append(Job(path, Path(path.name)))
    _check_distinct_outputs(jobs, out_dir, save_mask, save_prob)
    return jobs, failures


def _check_distinct_outputs(jobs: Sequence[Job], out_dir: Path, save_mask: bool, save_prob: bool = False) -> None:
    """UserError when two jobs would write the same output file."""
    seen: dict[Path, Path] = {}
    for job in jobs:
        outputs = [job.relative]
        if save_mask:
            outputs.append(mask_path(job.relative))
        if save_prob:
            outputs.append(prob_path(job.relative))
        for output in outputs:
            if output in seen:
                raise UserError(f"{seen[output]} and {job.source} would both be written to {out_dir / output}: "
                                "give them in separate runs or with different --out folders, or pass their "
                                "parent folders instead of the files")
        seen.update(dict.fromkeys(outputs, job.source))


def mask_path(target: Path) -> Path:
    """Where ``--save-mask`` writes the class-index PNG of the output ``target``."""
    return target.with_name(f"{target.stem}_mask.png")


def prob_path(target: Path) -> Path:
    """Where ``--save-prob`` writes the probability PNG of the output ``target``."""
    return target.with_name(f"{target.stem}_prob.png")
