"""gloo's loop threads go to the idle scheduling class, and nothing else of the process does."""

import os
import sys
from pathlib import Path

import pytest

from vpipe.profiler.linkcost import _pair
from vpipe.runtime.loopthreads import LOOP_THREAD, idle_loop_threads


def _policies() -> dict[str, set[int]]:
    """Each thread name of this process: the scheduling policies its threads have."""
    found: dict[str, set[int]] = {}
    for task in Path("/proc/self/task").iterdir():
        name = (task / "comm").read_text().strip()
        found.setdefault(name, set()).add(os.sched_getscheduler(int(task.name)))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_only_gloo_loop_threads_go_idle():
    groups = _pair()  # two gloo groups: their loop threads start with them
    before = _policies()
    assert os.SCHED_IDLE not in before[LOOP_THREAD]
    assert idle_loop_threads() == sum(
        1
        for t in Path("/proc/self/task").iterdir()
        if (t / "comm").read_text().strip() == LOOP_THREAD
    )
    after = _policies()
    assert after[LOOP_THREAD] == {os.SCHED_IDLE}
    others = {name: p for name, p in after.items() if name != LOOP_THREAD}
    assert all(os.SCHED_IDLE not in p for p in others.values()), others
    del groups
