"""One run at a time per run directory: a live holder refuses a second run, a dead one's lock is
reported and taken over, and the lock goes when the run ends."""

import os
import socket
import subprocess

import pytest

from vpipe.common.errors import VpipeError
from vpipe.common.runlock import LOCK, check_free, holder_of, run_lock


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_the_lock_names_its_holder_and_goes_at_the_end(tmp_path):
    with run_lock(tmp_path, notice=pytest.fail):
        holder = holder_of(tmp_path)
        assert (holder.pid, holder.host) == (os.getpid(), socket.gethostname())
    assert not (tmp_path / LOCK).exists()


@pytest.mark.parametrize("host", [socket.gethostname(), "another-host"])
def test_a_live_or_unknowable_holder_refuses_a_second_run(tmp_path, host):
    (tmp_path / LOCK).write_text(f"{os.getpid()} {host}\n")  # this process: alive
    with pytest.raises(VpipeError, match=f"in use by vpipe-train pid {os.getpid()} on {host}"):
        with run_lock(tmp_path, notice=pytest.fail):
            pytest.fail("the run went ahead")
    with pytest.raises(VpipeError, match="wait for it to end before replacing"):
        check_free(tmp_path, "replacing")
    assert (tmp_path / LOCK).read_text() == f"{os.getpid()} {host}\n"  # left as it was


def test_a_dead_holder_is_reported_and_taken_over(tmp_path):
    pid = dead_pid()
    (tmp_path / LOCK).write_text(f"{pid} {socket.gethostname()}\n")
    notes = []
    with run_lock(tmp_path, notice=notes.append):
        assert holder_of(tmp_path).pid == os.getpid()
    assert len(notes) == 1 and f"pid {pid}" in notes[0] and "gone" in notes[0]
    check_free(tmp_path, "replacing")  # free now
