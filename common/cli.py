"""The command-line boundary shared by every `vpipe-*` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from vpipe.common.errors import Failed, VpipeError

USAGE_ERROR = 2


class CommandParser(argparse.ArgumentParser):
    """argparse whose usage mistakes (a bad option value, a missing argument) fail like every
    other bad input: one line, exit status 2, instead of argparse's usage block."""

    def error(self, message: str) -> NoReturn:
        raise VpipeError(f"{message}; see {self.prog} --help")


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


def not_implemented(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    """Parse `argv` (so `--help` and argument errors work) and say the command is not built yet."""
    parser.parse_args(argv)
    print(f"{parser.prog}: not implemented yet", file=sys.stderr)
    return 1
