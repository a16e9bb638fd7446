"""benchmarks/burner.py: the hog burns its core only, starts when told, and never outlives
what started it (the block's end, an exception, its parent killed outright)."""

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BURNER_FILE = Path(__file__).resolve().parents[1] / "benchmarks" / "burner.py"
_spec = importlib.util.spec_from_file_location("burner", BURNER_FILE)
assert _spec and _spec.loader
burner = sys.modules["burner"] = importlib.util.module_from_spec(_spec)  # as its dataclass needs
_spec.loader.exec_module(burner)


def cpu_s(pid: int) -> float:
    """The process's CPU seconds so far (user and system, /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def gone(pid: int, within_s: float = 0.0) -> bool:
    """Whether no process `pid` exists (or only its zombie, which cannot run) within `within_s`."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state == "Z" or time.monotonic() > deadline:
            return state == "Z"
        time.sleep(0.05)


def test_burns_its_core_then_stops():
    core = max(os.sched_getaffinity(0))
    with burner.burning(core) as hog:
        assert os.sched_getaffinity(hog.pid) == {core}
        time.sleep(0.5)
        assert cpu_s(hog.pid) > 0.1  # a hog, even sharing its core with others
    assert gone(hog.pid)  # stopped and reaped when the block ended


def test_waits_its_delay():
    with burner.burning(min(os.sched_getaffinity(0)), delay_s=30.0) as hog:
        time.sleep(0.5)
        assert cpu_s(hog.pid) < 0.1  # its start, then sleeping
    assert gone(hog.pid)  # stopped during its delay too


def test_an_interrupt_stops_it():
    with pytest.raises(KeyboardInterrupt), burner.burning(min(os.sched_getaffinity(0))) as hog:
        raise KeyboardInterrupt
    assert gone(hog.pid)


def test_it_ends_with_a_parent_killed_outright():
    """A process that is SIGKILLed inside `burning` cannot stop the hog: the hog sees its
    parent gone and stops itself."""
    code = (
        f"import os, sys, time; sys.path.insert(0, {str(BURNER_FILE.parent)!r}); import burner\n"
        "with burner.burning(min(os.sched_getaffinity(0))) as hog:\n"
        "    print(hog.pid, flush=True)\n"
        "    time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    try:
        assert not gone(pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert gone(pid, within_s=5.0)
    finally:  # the test failing leaves no hog either
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
