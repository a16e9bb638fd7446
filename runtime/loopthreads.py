"""Run gloo's network threads only on cores the stages leave idle.

gloo's TCP transport reads every socket in a loop thread of its own (`gloo_tcp_loop`, one
per process group). That thread only *tries* a pair's lock: while the stage's main thread
holds it, or has been preempted holding it, an already-readable socket makes `epoll_wait`
return at once, again and again. On a machine with as many cores as stages, the four loop
threads of two stages took 14-17% of a core each doing that, from the stages' compute (perf:
their samples in the kernel's epoll path). A stage that waits for a message leaves its core
idle, which is when the loop thread has real work to do; so the loop threads go to the idle
scheduling class (SCHED_IDLE), and run when no stage computes. Measured on `mlp`'s 2-stage
asp pipeline, mid-run: 1,058 to 2,271 micro-batches/s; with a busy process on one of the two
cores, 490 to 1,000; no change on `gpt` or `resnet`, whose messages are rare beside their
compute.

Not with `--bind-cores`: bound, a stage's loop threads may run only on its own cores, and a
busy neighbour there leaves them no idle moment (the same `mlp` pipeline, bound, beside a busy
process on core 1: 612 micro-batches/s with the loop threads left alone, 172 idle).
"""

from __future__ import annotations

import os
from pathlib import Path

LOOP_THREAD = "gloo_tcp_loop"


def idle_loop_threads() -> int:
    """Move this process's gloo loop threads to SCHED_IDLE; how many moved (0 off Linux)."""
    policy = getattr(os, "SCHED_IDLE", None)
    tasks = Path("/proc/self/task")
    if policy is None or not tasks.is_dir():
        return 0
    moved = 0
    for task in tasks.iterdir():
        try:
            if (task / "comm").read_text().strip() != LOOP_THREAD:
                continue
            os.sched_setscheduler(int(task.name), policy, os.sched_param(0))
        except OSError:  # the thread ended meanwhile, or the scheduler refused
            continue
        moved += 1
    return moved
