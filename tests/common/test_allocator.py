"""With freed memory kept, tensors made and freed again and again stop faulting pages in: the
pattern a stage's micro-batches make (two 20 MiB tensors at once, then none), counted in minor
page faults against glibc's defaults, each in a fresh process."""

import subprocess
import sys

import pytest

CYCLES = """
import resource, sys
import torch
if sys.argv[1] == "keep":
    from vpipe.common.allocator import keep_freed_memory
    assert keep_freed_memory()
def cycle():
    a, b = torch.ones(5 << 20), torch.ones(5 << 20)  # 20 MiB each: their sum is trimmed
    del a, b
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CYCLES, mode], capture_output=True, text=True, check=True
    )
    return int(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_not_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    pages = 10 * 2 * (20 << 20) // 4096  # every page of every tensor, faulted in each time
    assert default > pages / 2  # glibc's defaults hand the blocks back
    assert kept < default / 4, (kept, default)
