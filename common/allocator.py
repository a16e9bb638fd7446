"""Keep freed memory in the process, so a tensor's pages are not faulted in again on every use.

On a CPU, torch allocates through the C library's malloc. glibc hands large blocks back to the
kernel when they are freed (the top of the heap past a trim threshold, blocks past an mmap
threshold), and the next allocation of that size faults every page in again, zeroed (a
2-stage `widehead` run of 100 steps: 1.23 M page faults, 0.20 M with freed memory kept, and
595 against 739 samples/s). A pipeline stage frees and remakes the same tensors every micro-batch
(activations in flight, gradients, stashed weight versions), in an order that keeps glibc's
adaptive thresholds from settling, so it paid that on most actions (a stage's backward measured
1.3-1.5x a plain training loop's). The profiler and the runtime both call `keep_freed_memory`,
so the times a plan is made from and the times a run takes are taken under the same allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

# mallopt's parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

_KEEP_FREED_BYTES = 2**31 - 1  # mallopt takes an int: never trim the heap below 2 GiB free
_TOP_PAD_BYTES = 64 << 20  # grow the heap in 64 MiB steps: fewer brk calls
_MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest: blocks up to this come from the heap


def keep_freed_memory() -> bool:
    """Tell glibc to keep freed blocks for reuse; whether it applied (False off glibc)."""
    if platform.system() != "Linux":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES),
            (_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES),
            (_M_TOP_PAD, _TOP_PAD_BYTES),
        )
    )
