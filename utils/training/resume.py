"""Which checkpoint a run continues from (``--resume PATH|auto``), decided once for every process.

Rank 0 decides (``auto`` becomes ``<save-dir>/last.pth`` or a new run; a new run must not
overwrite a finished one) and broadcasts the decision, so nodes without a shared filesystem
cannot disagree. Every rank must then be able to read the chosen file; otherwise all ranks
stop with one message naming the ranks that cannot. A resumed run reads the flags it started
with back from its checkpoint (:func:`recorded_setting`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist

from utils.checkpoint import read_weights_file
from utils.errors import UserError
from utils.training.distributed import DistContext
from utils.training.options import TrainOptions


def _decide(options: TrainOptions) -> tuple[str | None, str | None, str | None]:
    """Rank 0's decision from its own filesystem: (checkpoint or None, note to print, error message)."""
    resume, note = options.resume, None
    if resume == "auto":
        candidate = Path(options.save_dir) / "last.pth"
        resume = str(candidate) if candidate.is_file() else None
        if resume is None:
            note = f"--resume auto: no {candidate} yet, starting a new run"
    elif resume and not Path(resume).is_file():
        return None, None, f"--resume {resume}: file not found (use auto for {options.save_dir}/last.pth)"
    if not resume and (Path(options.save_dir) / "last.pth").exists():
        # A new run would replace the checkpoints, metrics.csv, config.json and TensorBoard curves.
        return None, None, (f"--save-dir {options.save_dir} already holds a run (last.pth): continue it with "
                            "--resume auto or choose another --save-dir")
    return resume, note, None


def _broadcast(value: object, ctx: DistContext) -> object:
    """``value`` of rank 0 on every rank."""
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_resume(options: TrainOptions, ctx: DistContext) -> None:
    """Set ``options.resume`` to the checkpoint every rank continues from (None for a new run).

    Raises:
        UserError: on every rank, when the file is missing on rank 0, when a new run would
            overwrite ``<save-dir>/last.pth``, or when some rank cannot read the checkpoint.
    """
    resume, note, error = _broadcast(_decide(options) if ctx.is_main else None, ctx)  # type: ignore[misc]
    if error:
        raise UserError(error)
    if note and ctx.is_main:
        print(note)
    options.resume = resume
    if resume is None or not ctx.enabled:
        return
    readable = [None] * ctx.world_size
    dist.all_gather_object(readable, Path(resume).is_file())
    unreadable = [rank for rank, ok in enumerate(readable) if not ok]
    if unreadable:
        raise UserError(f"--resume {resume}: rank(s) {', '.join(map(str, unreadable))} cannot read this file. "
                        "Without a filesystem shared by every node, copy the checkpoint to the same path on "
                        "each node first")


def recorded_setting(path: str | Path, key: str) -> Any:
    """The value of the training flag ``key`` as the checkpoint at ``path`` recorded it (its ``config``
    holds every flag of the run), or None for a checkpoint that does not record it. The tensors are
    only mapped, not read: the trainer loads the checkpoint itself later."""
    obj = read_weights_file(path, mmap=True)
    return (obj.get("train") or obj.get("config") or {}).get(key)
