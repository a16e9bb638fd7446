"""The command-line boundary shared by every `vpipe-*` command."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, NoReturn

from vpipe.common.errors import Failed, VpipeError

USAGE_ERROR = 2


class CommandParser(argparse.ArgumentParser):
    """argparse whose usage mistakes (a bad option value, a missing argument) fail like every
    other bad input: one line, exit status 2, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise VpipeError(f"{message}; see {self.prog} --help")


@dataclass(frozen=True)
class WholeNumber:
    """An argparse type: a whole number from `least` (to `most`). A value out of range then fails
    while the arguments are parsed, which `vpipe-run` does for every step before the first runs;
    a class, not a closure, so a run config's checker can tell that the option takes an int."""

    takes: ClassVar[type] = int  # what a run config gives for it
    least: int
    most: int | None = None

    def __call__(self, text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < self.least or (self.most is not None and value > self.most):
            bound = f"from {self.least} to {self.most}" if self.most is not None else ""
            raise argparse.ArgumentTypeError(
                f"must be {bound or f'at least {self.least}'} (got {value})"
            )
        return value


@dataclass(frozen=True)
class Duration:
    """An argparse type: a finite length of time in `unit` (seconds, ms), at least 0 (NaN and
    inf fail too); a class, as WholeNumber is, so a run config's checker can tell that the
    option takes a number."""

    unit: str = "seconds"
    takes: ClassVar[type] = float

    def __call__(self, text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of {self.unit}") from None
        if not 0 <= value < math.inf:
            raise argparse.ArgumentTypeError(f"must be at least 0 {self.unit} (got {text})")
        return value


@dataclass(frozen=True)
class Spread(Duration):
    """An argparse type: how much something varies, as the standard deviation of its
    logarithm (0.1: about 10%), finite and at least 0."""

    unit: str = "log-sd"


def run_command(
    name: str, body: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None
) -> int:
    """Run `body(argv)`; turn a `VpipeError` into one line on stderr and exit status 2.

    Why here: every command must fail the same way on bad input — one readable line, no
    traceback — and a single wrapper keeps that promise in one place.
    """
    try:
        return body(argv)
    except VpipeError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return USAGE_ERROR
    except Failed as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return err.status
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130


def print_whole(line: str) -> None:
    """One write per line: every stage prints at once, and print's two writes (text, newline)
    interleave with another stage's when output is unbuffered."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"{line}\n".encode())
