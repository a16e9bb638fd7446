"""Stages forked from the fork server run with their launcher's environment, CPU affinity and
standard output as they are at each launch, not as they were when the server started: a
process that launches three times and changes them in between (real processes, torch's
elastic agent; the server may have been started by an earlier test, or by the first launch
here, whose output goes to a file)."""

import os

import pytest

from vpipe.runtime.launch import on_this_machine

# what each stage reports, one line: run by `exec` in the stage (a builtin pickles by name)
REPORT = (
    "import os\n"
    "affinity = sorted(os.sched_getaffinity(0))\n"
    "line = f\"stage {os.environ['RANK']}: {os.environ.get('VPIPE_FORKSTART')} {affinity}\"\n"
    "print(line, flush=True)"
)


def reports(text: str) -> set[str]:
    return {line for line in text.splitlines() if line.startswith("stage ")}


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux's")
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to narrow to 1")
def test_each_launch_hands_the_stages_its_own_environment_affinity_and_output(
    monkeypatch, capfd, tmp_path
):
    cores = sorted(os.sched_getaffinity(0))
    elsewhere = tmp_path / "first.txt"
    monkeypatch.setenv("VPIPE_FORKSTART", "first")
    kept = os.dup(1)
    with elsewhere.open("w") as file:
        os.dup2(file.fileno(), 1)
        try:
            on_this_machine(2, exec, REPORT)
        finally:
            os.dup2(kept, 1)
            os.close(kept)
    assert reports(elsewhere.read_text()) == {f"stage {k}: first {cores}" for k in (0, 1)}
    monkeypatch.setenv("VPIPE_FORKSTART", "second")
    os.sched_setaffinity(0, cores[:1])
    try:
        on_this_machine(2, exec, REPORT)
    finally:
        os.sched_setaffinity(0, cores)
    assert reports(capfd.readouterr().out) == {f"stage {k}: second {cores[:1]}" for k in (0, 1)}
    monkeypatch.delenv("VPIPE_FORKSTART")
    on_this_machine(1, exec, REPORT)
    assert reports(capfd.readouterr().out) == {f"stage 0: None {cores}"}
    assert len(reports(elsewhere.read_text())) == 2  # nothing more went to the first's output
