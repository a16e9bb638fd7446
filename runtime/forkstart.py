"""Start a machine's stage processes from a fork server that has imported torch once.

Under multiprocessing's `spawn` every stage process imports torch itself, 1.7 s of CPU each on
a 2-core machine: a 2-stage run of `mlp` took 3.8 s to start and finish 2 steps, a 4-process
one 7.5 s. A fork server (`forkserver`) imports torch once and forks every stage from itself:
1.2 and 2.2 s, and the test suite's multi-process tests ran in 233 s instead of 482.

The server outlives the launch that started it, and a process forked from it inherits the
server's environment, CPU affinity and standard output and error: those of the launching
process when its first launch started the server. A process that launches more than once (the
tests, the benchmarks, a notebook) may have changed them since, so every launch hands the
stages its own (`Launcher`), and each stage takes them on before it runs. (The working
directory and sys.path come with multiprocessing's own preparation data.)
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any

START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
PRELOADED = ["torch", "vpipe.runtime.launch"]  # what every stage imports: once, in the server
_SERVERS_ENVIRON = dict(os.environ)  # in a stage: what it inherited, before the agent's keys


class _Streams:
    """The launcher's standard output and error descriptors (1 and 2, whatever sys.stdout
    wraps): pickled for a stage, each is passed to it open (multiprocessing's `DupFd`)."""

    def __init__(self, out: int, err: int) -> None:
        self.out, self.err = out, err

    def __reduce__(self) -> tuple[Any, ...]:
        return (_received, (reduction.DupFd(self.out), reduction.DupFd(self.err)))


def _received(out: Any, err: Any) -> _Streams:
    return _Streams(out.detach(), err.detach())


@dataclass(frozen=True)
class Launcher:
    """What a stage process takes on from the process that launched it, as it was at launch."""

    environ: dict[str, str]
    affinity: frozenset[int] | None  # None where the platform has no CPU affinity
    streams: _Streams

    @classmethod
    def now(cls) -> Launcher:
        sys.stdout.flush()
        sys.stderr.flush()
        affinity = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return cls(dict(os.environ), affinity, _Streams(1, 2))  # as a spawned child's

    def adopt(self) -> None:
        """In the stage: the launcher's environment with the keys torch's agent set for this
        stage (RANK, MASTER_PORT, ...: those that differ from what the server had), its CPU
        affinity, and its output and error."""
        agents = {k: v for k, v in os.environ.items() if _SERVERS_ENVIRON.get(k) != v}
        os.environ.clear()
        os.environ.update({**self.environ, **agents})
        if self.affinity is not None:
            os.sched_setaffinity(0, self.affinity)
        for received, standard in ((self.streams.out, 1), (self.streams.err, 2)):
            if received != standard:
                os.dup2(received, standard)
                os.close(received)


def launched(launcher: Launcher, entrypoint: Callable[..., None], *args: Any) -> None:
    """A stage process's first call: take on the launcher's state, then run `entrypoint`."""
    launcher.adopt()
    entrypoint(*args)


def preload() -> None:
    """Have the fork server import what every stage needs, when a launch first starts it."""
    if START_METHOD == "forkserver":
        multiprocessing.set_forkserver_preload(PRELOADED)
