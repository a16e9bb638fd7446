"""With freed memory kept, a freed tensor's pages stay with the process (so the next tensor of
that size is not faulted in again, zeroed); under glibc's defaults they go back to the kernel.
Each case in a fresh process: glibc's thresholds move with what a process has freed before."""

import subprocess
import sys

import pytest

FREED_MIB = """
import os, sys
import torch
if sys.argv[1] == "keep":
    from vpipe.common.allocator import keep_freed_memory
    assert keep_freed_memory()
def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
tensor = torch.ones(6 << 20)  # 24 MiB: past glibc's first mmap threshold, under ours
held = resident()
del tensor
print((held - resident()) >> 20)
"""


def _returned_mib(mode: str) -> int:
    """MiB the process's resident memory fell by when the tensor was freed."""
    done = subprocess.run(
        [sys.executable, "-c", FREED_MIB, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_stays_with_the_process():
    assert _returned_mib("default") >= 20  # glibc's defaults hand the 24 MiB back
    assert _returned_mib("keep") <= 1
