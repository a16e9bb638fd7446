"""`vpipe-train --bind-cores`: pin each process of this machine to cores of its own, so that a
stage slowed by something sharing its cores (a neighbour job, a data loader) is slowed alone,
as torchrun --numa-binding and numactl users expect, instead of the kernel spreading every
stage's threads, and the slowdown, over all cores.

The rule: the cores this process may use when it starts (`os.sched_getaffinity`: what taskset,
numactl or a slurm cgroup allow), sorted, cut into LOCAL_WORLD_SIZE contiguous blocks of
⌊cores / processes⌋ cores each; the process of local rank i takes block i. Cores left over
stay unused, so that every stage gets the same share, as the plan assumed."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path

from vpipe.common.errors import VpipeError


def core_block(allowed: Collection[int], local_rank: int, local_processes: int) -> tuple[int, ...]:
    """The cores of local rank `local_rank` among `local_processes` sharing `allowed`."""
    if len(allowed) < local_processes:
        raise VpipeError(
            f"--bind-cores: {local_processes} processes on this machine but only "
            f"{len(allowed)} core{'s' * (len(allowed) != 1)} ({shown(allowed)}) for them to "
            f"use; allow vpipe-train at least {local_processes} (taskset -c, or the job's CPU "
            "allocation), or leave out --bind-cores to let the processes share the cores"
        )
    size = len(allowed) // local_processes
    return tuple(sorted(allowed)[local_rank * size : (local_rank + 1) * size])


def check_enough_cores(local_processes: int) -> None:
    """Before any process starts: each would otherwise refuse alone, in its own log."""
    core_block(_allowed_cores(), 0, local_processes)


def bind_own_cores(local_rank: int, local_processes: int) -> tuple[int, ...]:
    """Pin this process to its block and return it. Every thread it already has is pinned too
    (`os.sched_setaffinity(0, …)` moves the calling thread only); threads started later
    inherit the block."""
    cores = core_block(_allowed_cores(), local_rank, local_processes)
    for thread in _threads():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(thread, cores)
    return cores


def threads_cores() -> tuple[int, ...] | None:
    """The cores any thread of this process (torch's, gloo's) may run on, for its stage log;
    None where the system does not say (no sched_getaffinity: not Linux)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores: set[int] = set()
    for thread in _threads():
        with contextlib.suppress(ProcessLookupError):
            cores |= os.sched_getaffinity(thread)
    return tuple(sorted(cores))


def shown(cores: Collection[int]) -> str:
    """Cores as taskset -c lists them: 0,1,2."""
    return ",".join(map(str, sorted(cores)))


def _allowed_cores() -> set[int]:
    if not hasattr(os, "sched_getaffinity"):
        raise VpipeError(
            "--bind-cores: this system cannot pin a process to cores (it has no "
            "sched_setaffinity, which Linux has); leave out --bind-cores"
        )
    return os.sched_getaffinity(0)


def _threads() -> list[int]:
    return [int(task.name) for task in Path("/proc/self/task").iterdir()]
