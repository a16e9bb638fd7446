"""What one message between two stages costs the CPU, with and without work between messages.

    python benchmarks/message_cost.py [--messages 200]

Two processes on this machine exchange messages over gloo as a 2-stage pipeline's stages do:
the first sweeps a buffer (its "forward"), sends, and takes the reply to the message before;
the second receives, sweeps its buffer, replies. Both sweep at the same time, as both stages
of a pipeline compute at once. Per cell: the CPU milliseconds per message per side that are not
the sweep (the process's CPU time, its gloo threads included, less the sweeps' own), the least
of three runs: other work only adds to it.

The profile's `link` term (profiler/linkcost.py) is the first row's kind of figure: messages
back to back. The rows below it add work between the messages, as a stage's actions are; a
running pipeline's stages pay several times these figures (docs/benchmarks.md, "Throughput
prediction"), which is what this table rules out as gloo's own cost.
"""

from __future__ import annotations

import argparse
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORK_MIB = (0.0, 0.5, 4.0, 16.0)  # swept by each side between two messages
MESSAGE_BYTES = (4 << 10, 64 << 10, 1 << 20)
RUNS = 3


def side(rank: int, port: int, nbytes: int, messages: int, work_mib: float, out) -> None:
    """One stage: `messages` exchanges; puts (rank, least CPU ms per message) on `out`."""
    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0, timedelta(seconds=60))
    group = dist.ProcessGroupGloo(store, rank, 2, timedelta(seconds=60))
    buffer = torch.ones(max(1, int(work_mib * 2**18)))
    sent = [torch.ones(nbytes // 4) for _ in range(2)]
    received = [torch.empty(nbytes // 4) for _ in range(2)]

    def sweep() -> float:
        start = time.thread_time()
        if work_mib:
            buffer.mul_(1.0)
        return time.thread_time() - start

    def run(count: int) -> float:
        swept, pending = 0.0, []
        start = time.process_time()
        for i in range(count):
            if rank == 0:
                swept += sweep()
                pending.append(group.send([sent[i % 2]], 1, 0))  # type: ignore[attr-defined]
                if i:
                    group.recv([received[i % 2]], 1, 0).wait()  # type: ignore[attr-defined]
            else:
                group.recv([received[i % 2]], 0, 0).wait()  # type: ignore[attr-defined]
                swept += sweep()
                pending.append(group.send([sent[i % 2]], 0, 0))  # type: ignore[attr-defined]
            if len(pending) > 1:
                pending.pop(0).wait()
        for work in pending:
            work.wait()
        if rank == 0:
            group.recv([received[0]], 1, 0).wait()  # type: ignore[attr-defined]
        # each message is sent by one side and received by the other: two per exchange
        return (time.process_time() - start - swept) / count / 2 * 1e3

    run(20)  # warm-up
    out.put((rank, min(run(messages) for _ in range(RUNS))))


def cell(port: int, nbytes: int, messages: int, work_mib: float) -> float:
    """Both sides' mean CPU ms per message per side."""
    context = mp.get_context("spawn")
    out = context.Queue()
    sides = [
        context.Process(target=side, args=(rank, port, nbytes, messages, work_mib, out))
        for rank in (0, 1)
    ]
    for process in sides:
        process.start()
    results = [out.get(timeout=300) for _ in sides]
    for process in sides:
        process.join()
    return sum(ms for _, ms in results) / len(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="per run")
    args = parser.parse_args()
    sizes = "".join(f"{f'{b >> 10} KiB':>10}" for b in MESSAGE_BYTES)
    print("CPU ms per message per side, 2 processes, gloo over loopback, 1 thread each")
    print(f"{'work between (MiB)':<20}{sizes}")
    port = 29600
    for work_mib in WORK_MIB:
        row = []
        for nbytes in MESSAGE_BYTES:
            port += 1
            row.append(cell(port, nbytes, args.messages, work_mib))
        print(f"{work_mib:<20}" + "".join(f"{ms:>10.3f}" for ms in row), flush=True)


if __name__ == "__main__":
    main()
