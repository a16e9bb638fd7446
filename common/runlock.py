"""One run at a time in a run directory: a lock file that names the process holding it.

Two `vpipe-train` runs into the same `out/run/` would write each other's metrics, events and
final weights, and both exit 0. The launcher takes `run/.lock` (created exclusively, holding
its pid and host) before any stage starts and removes it when the run ends; a second run is
refused with the holder named. A lock whose process is gone (on this host) is stale: it is
reported and taken over.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from vpipe.common.errors import VpipeError

LOCK = ".lock"


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str

    def alive(self) -> bool | None:
        """Whether the process still runs; None when it is on another host (cannot tell)."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # someone else's process: it exists
            return True
        return True


def holder_of(run_dir: Path) -> Holder | None:
    """Who holds `run_dir`'s lock, or None when it is free (or the lock file is unreadable)."""
    try:
        pid, host = (run_dir / LOCK).read_text().split(maxsplit=1)
        return Holder(int(pid), host.strip())
    except (OSError, ValueError):
        return None


def check_free(run_dir: Path, what: str) -> None:
    """Refuse `what` (e.g. "replacing out/") while a live run holds `run_dir`."""
    holder = holder_of(run_dir)
    if holder is not None and holder.alive() is not False:
        raise VpipeError(
            f"{run_dir} is in use by vpipe-train pid {holder.pid} on {holder.host}; "
            f"wait for it to end before {what}"
        )


@contextlib.contextmanager
def run_lock(run_dir: Path, notice: Callable[[str], None]) -> Iterator[None]:
    """Hold `run_dir` for the duration of the block; `notice` hears of a stale lock taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    mine = Holder(os.getpid(), socket.gethostname())
    for _ in range(2):
        try:
            with open(path, "x") as file:
                file.write(f"{mine.pid} {mine.host}\n")
            break
        except FileExistsError:
            holder = holder_of(run_dir)
            if holder is not None and holder.alive() is not False:
                raise VpipeError(
                    f"{run_dir} is in use by vpipe-train pid {holder.pid} on {holder.host}: "
                    "one run at a time per out/; wait for it, or generate into another -o "
                    f"(if that process is gone, remove {path})"
                ) from None
            what = f"pid {holder.pid} on {holder.host}" if holder else "an unreadable lock"
            notice(f"{path} was left by a run that is gone ({what}); taking it over")
            path.unlink(missing_ok=True)
    else:
        raise VpipeError(f"cannot take {path}: another run took it at the same moment; retry")
    try:
        yield
    finally:
        if holder_of(run_dir) == mine:
            path.unlink(missing_ok=True)
