"""The error types the command line turns into one line.

Library code raises `VpipeError` with a message that names the problem and the fix; the command
line prints that message as one line and exits with status 2. `Failed` carries a failure whose
traceback is already saved (a training stage's log) and the status to exit with. Anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations


class VpipeError(Exception):
    """Bad input that the user can fix: the message says what is wrong and what to do."""


class Failed(Exception):
    """A failure already diagnosed, its details written elsewhere (a training stage's log): the
    command line prints the message as one line and exits with `status` (2: bad input, 1: a
    bug), without a traceback."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
