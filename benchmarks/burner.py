"""A CPU hog pinned to one core, to slow one stage on purpose (issue 19's benchmarks): what a
neighbour job or a data loader does to a stage bound by `vpipe-train --bind-cores`.

    with burning(core=1, delay_s=5.0) as burner:   # from a benchmark
        ...
    python benchmarks/burner.py 1 [--delay-s 5]    # by hand, until Ctrl-C

The hog is a separate process at normal priority running a tight pure-Python loop (one thread:
it takes one core's share, never more, and starts in milliseconds, with no torch to import). It
never outlives what started it: `burning` stops it when its block ends, on an exception or
Ctrl-C too, and the hog stops itself when its parent is gone (killed outright)."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

STOP_WAIT_S = 5.0  # for the hog to end on SIGTERM, before SIGKILL


@dataclass(frozen=True)
class Burner:
    """A running hog: the core it is pinned to, when it starts burning (seconds after it was
    started), and its process id."""

    core: int
    delay_s: float
    pid: int


@contextlib.contextmanager
def burning(core: int, delay_s: float = 0.0) -> Iterator[Burner]:
    """Burn `core` from `delay_s` seconds on, until the block ends. Returns once the hog is
    pinned. Its own process group: Ctrl-C in a terminal reaches only this process, whose exit
    from the block stops the hog. Not its own session: where the kernel groups scheduling by
    session (autogroup, /proc/sys/kernel/sched_autogroup_enabled), a hog in a session of its
    own competed with the training's whole session rather than with the stage's thread, and
    slowed the bound stage anywhere from 1.0x to 2x from one run to the next; in the same
    session it takes half of the stage's core, run after run."""
    command = [sys.executable, __file__, str(core), "--delay-s", str(delay_s)]
    hog = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, process_group=0)
    try:
        assert hog.stdout is not None
        if not hog.stdout.readline().startswith("burning"):  # its pinned, ready line
            raise RuntimeError(f"the CPU burner for core {core} failed to start: {command}")
        yield Burner(core, delay_s, hog.pid)
    finally:
        hog.terminate()
        try:
            hog.wait(STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            hog.kill()
            hog.wait()


def burn(core: int, delay_s: float) -> None:
    """In the hog: pin to `core`, say so, wait `delay_s`, then burn while the parent lives."""
    os.sched_setaffinity(0, {core})
    parent = os.getppid()
    print(f"burning core {core} from {delay_s:g} s on (pid {os.getpid()})", flush=True)
    start = time.monotonic()
    while time.monotonic() - start < delay_s:
        if os.getppid() != parent:
            return
        time.sleep(0.05)
    x = 0
    while os.getppid() == parent:  # a few milliseconds a check
        for i in range(100_000):
            x = (x * 31 + i) & 0xFFFF


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("core", type=int, help="the core to burn")
    parser.add_argument("--delay-s", type=float, default=0.0, help="seconds before it burns")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        burn(args.core, args.delay_s)


if __name__ == "__main__":
    main()
