"""HiGHS (the `highspy` package) as the planner calls it: silent, stdout kept clean."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import highspy


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """HiGHS prints a banner on file descriptor 1 (the first solver made, even with its output
    off); keep the command's stdout clean."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def silent_highs() -> highspy.Highs:
    """A HiGHS instance that prints nothing (highspy is imported here, when first needed: it
    takes a tenth of a second)."""
    import highspy

    with quiet_stdout():
        solver = highspy.Highs()
    solver.silent()
    return solver
