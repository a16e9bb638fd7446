"""What moving a tensor between neighbouring stages costs each stage's process, on a CPU.

The runtime sends and receives through gloo, whose threads copy the bytes through TCP on the
same cores the stages compute on: every transfer takes CPU time from both ends, time a
bandwidth figure does not show (it overlaps nothing when every core is computing). Measured
here with two gloo groups in two threads of this process over loopback, as the runtime's stages
on one machine talk: both ends' CPU time is this process's, and each end is charged half.
A line through three message sizes gives the cost per message and per MiB.
"""

from __future__ import annotations

import statistics
import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from vpipe.profiler.schema import LinkCost

SIZES = (4 << 10, 1 << 20, 4 << 20)  # bytes per message; a line is fitted through them
ROUNDS = 5  # of `repeats` messages each; the least counts: other work only adds to it


def measure_link_cost(repeats: int, warmup: int) -> LinkCost | None:
    """Per-side CPU cost of gloo messages on this machine, or None where gloo cannot start."""
    try:
        groups = _pair()
    except RuntimeError:
        return None
    sizes = [_Exchange(groups, size) for size in SIZES]
    for size in sizes:
        size.cpu_ms(warmup)
    rounds = [[size.cpu_ms(repeats) for size in sizes] for _ in range(ROUNDS)]  # interleaved
    ms = [min(r[i] for r in rounds) for i in range(len(SIZES))]  # others only add
    per_mib, per_message = statistics.linear_regression([size / 2**20 for size in SIZES], ms)
    return LinkCost(
        backend="gloo",
        message_ms=round(max(per_message, 0.0) / 2, 4),
        ms_per_mib=round(max(per_mib, 0.0) / 2, 4),
    )


def _pair() -> list[dist.ProcessGroupGloo]:
    """Ranks 0 and 1 of one gloo group, made together (each waits for the other)."""
    store = dist.HashStore()
    groups: list[dist.ProcessGroupGloo | None] = [None, None]
    failures: list[BaseException] = []

    def make(rank: int) -> None:
        try:
            groups[rank] = dist.ProcessGroupGloo(store, rank, 2, timedelta(seconds=30))
        except RuntimeError as err:
            failures.append(err)

    threads = [threading.Thread(target=make, args=(rank,)) for rank in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(str(failures[0]))
    return [g for g in groups if g is not None]


class _Exchange:
    """Messages of one size from rank 0 to rank 1, received in a second thread."""

    def __init__(self, groups: list[dist.ProcessGroupGloo], nbytes: int) -> None:
        self.groups = groups
        self.sent = torch.ones(nbytes // 4)
        self.received = torch.empty_like(self.sent)

    def cpu_ms(self, count: int) -> float:
        """Process CPU milliseconds (both ends) per message, over `count` messages."""
        receiver = threading.Thread(target=self._receive, args=(count,))
        start = time.process_time()
        receiver.start()
        for _ in range(count):
            # torch's stubs leave out send and recv of a backend, which it binds
            self.groups[0].send([self.sent], 1, 0).wait()  # type: ignore[attr-defined]
        receiver.join()
        return (time.process_time() - start) / max(count, 1) * 1e3

    def _receive(self, count: int) -> None:
        for _ in range(count):
            self.groups[1].recv([self.received], 0, 0).wait()  # type: ignore[attr-defined]
