"""What moving a tensor between neighbouring stages costs each stage's process, on a CPU.

The runtime sends and receives through gloo, whose threads copy the bytes through TCP on the
same cores the stages compute on: every transfer takes CPU time from both ends, time a
bandwidth figure does not show (it overlaps nothing when every core is computing). Measured
here with two gloo groups in two threads of this process over loopback, as the runtime's stages
on one machine talk: both ends' CPU time is this process's, and each end is charged half.
A line through three message sizes, anchored at the smallest, gives the cost per message and
per MiB.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from vpipe.profiler.schema import LinkCost

SIZES = (4 << 10, 1 << 20, 4 << 20)  # bytes per message; a line is fitted through them
ROUNDS = 5  # per size, interleaved; the least counts: other work only adds to it
MAX_MESSAGES = 5000  # per round


def measure_link_cost(repeats: int, warmup: int, min_time_s: float = 0.0) -> LinkCost | None:
    """Per-side CPU cost of gloo messages on this machine, or None where gloo cannot start.
    Each round sends at least `repeats` messages, and enough to take a tenth of `min_time_s`:
    with 5 messages of 4 KiB a round (0.3 ms), three profiles in a row put the cost per
    message at 0.025, 0.047 and 0.074 ms (docs/profiling.md, Transfers between stages)."""
    try:
        groups = _pair()
    except RuntimeError:
        return None
    sizes = [_Exchange(groups, size) for size in SIZES]
    for size in sizes:
        size.cpu_ms(max(warmup, 1))
    counts = [_count(size.cpu_ms(repeats), repeats, min_time_s / 10) for size in sizes]
    rounds = [  # interleaved
        [size.cpu_ms(count) for size, count in zip(sizes, counts, strict=True)]
        for _ in range(ROUNDS)
    ]
    ms = [min(r[i] for r in rounds) for i in range(len(SIZES))]  # others only add
    per_mib, per_message = _line([size / 2**20 for size in SIZES], ms)
    return LinkCost(
        backend="gloo",
        message_ms=round(max(per_message, 0.0) / 2, 4),
        ms_per_mib=round(max(per_mib, 0.0) / 2, 4),
    )


def _line(mib: list[float], ms: list[float]) -> tuple[float, float]:
    """(ms per MiB, ms per message): the line through the smallest size's point that fits the
    others best. Its cost per message is the small message's own: a free fit's intercept
    moved by 0.03 ms between profiles with a 10% wobble of the 4 MiB point."""
    rise = [(x - mib[0], y - ms[0]) for x, y in zip(mib[1:], ms[1:], strict=True)]
    per_mib = sum(dx * dy for dx, dy in rise) / sum(dx * dx for dx, _ in rise)
    return per_mib, ms[0] - per_mib * mib[0]


def _count(ms_each: float, repeats: int, round_s: float) -> int:
    """Messages per round: at least `repeats`, and enough for `round_s` of CPU time."""
    wanted = round_s * 1e3 / ms_each if ms_each > 0 else MAX_MESSAGES
    return int(min(max(repeats, wanted), MAX_MESSAGES))


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
