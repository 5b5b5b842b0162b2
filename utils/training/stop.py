"""Stopping a run cleanly: Ctrl-C / SIGTERM as a flag checked between iterations, and the resume command.

The first signal asks the loop to stop after the current iteration and save ``last.pth``;
a second one aborts at once. :func:`resume_command` prints how to continue exactly there.
"""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class StopRequest:
    """Turns the first Ctrl-C (or SIGTERM) into a flag checked between iterations; a second Ctrl-C aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this iteration to save last.pth (press Ctrl-C again to abort at once)",
              file=sys.stderr)

    @contextmanager
    def installed(self):
        """Install the handlers in the main thread for the duration of the block."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def resume_command(argv: Sequence[str], save_dir: str | Path, world_size: int) -> str:
    """The command line that continues this run: the same flags plus ``--save-dir DIR --resume auto``."""
    kept: list[str] = []
    skip = False
    for token in argv:
        if skip:
            skip = False
            continue
        if token in ("--resume", "--save-dir"):
            skip = True
            continue
        if token.startswith(("--resume=", "--save-dir=")):
            continue
        kept.append(token)
    launcher = f"torchrun --nproc_per_node={world_size} train.py" if world_size > 1 else "python train.py"
    return " ".join([launcher, *map(shlex.quote, kept), "--save-dir", shlex.quote(str(save_dir)),
                     "--resume", "auto"])
