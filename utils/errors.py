"""User-facing errors and the wrapper that turns them into one clear line and an exit code.

Scripts raise :class:`UserError` for anything the user can fix (a missing file, a bad
flag, a broken label). ``run_cli`` prints it as a single ``error:`` line on stderr and
exits non-zero, so nobody has to read a traceback to learn what to do. A flag that every
script takes is checked here once: ``--input-size`` (:func:`parse_input_size`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

# The smallest network input side: one feature pixel at the largest output stride (16). predict.py and
# get_miou.py's TTA scales never go below it either (utils.inference.predictor).
MIN_INPUT_SIDE = 16


class UserError(Exception):
    """A problem with the user's input, files or flags; the message says what to do."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as a :class:`UserError`, so ``run_cli`` prints one ``error:`` line
    and exits 2 (plain argparse prints the whole usage block first)."""

    def error(self, message: str):
        command = f"python {self.prog}" if self.prog.endswith(".py") else self.prog
        raise UserError(f"{message} (see {command} --help)")


def parse_input_size(values: Sequence[int] | None, minimum: int = MIN_INPUT_SIDE) -> list[int] | None:
    """``--input-size H [W]`` as ``[H, W]`` (a square when only H is given); None (flag not given) stays None.

    Raises:
        UserError: naming the value, for more than two numbers or a side below ``minimum``.
    """
    if values is None:
        return None
    if len(values) not in (1, 2) or min(values) < minimum:
        raise UserError(f"--input-size {' '.join(map(str, values))}: give H or H W, each at least {minimum} "
                        "(e.g. --input-size 512 or --input-size 512 1024)")
    return [values[0], values[-1]]


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a script's ``main(argv)`` and exit with its status, reporting ``UserError`` in one line."""
    try:
        status = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(int(status or 0))
