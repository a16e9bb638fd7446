"""What more than one benchmark measures the same way (imported by the scripts beside it)."""

from __future__ import annotations

import contextlib
import csv
import os
import resource
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vpipe.codegen.schema import load_pipeline
from vpipe.runtime.cli import main as train_main
from vpipe.runtime.events import read_events
from vpipe.runtime.report import busy_s

QUIET = 0.9  # idle share of the machine's CPU that `await_quiet` waits for


@dataclass(frozen=True)
class Throughput:
    """Samples/s of one run on two clocks. `wall`: over the run, as the loss's stage measured
    it; it also counts the time the machine gave to others (this 2-vCPU guest lost 20-50% to
    the hypervisor in some minutes). `cpu`: what the slowest stage's busy CPU time per
    micro-batch allows (asp's steady state: the bottleneck sets the pace), which leaves that
    out when each stage computes on one thread."""

    wall: float
    cpu: float


def samples_per_s(out: Path, steps: int, *flags: str) -> float:
    """Train `out`'s pipeline for `steps` steps, one thread per stage, and return samples/s over
    the run, as the stage that computes the loss measured it (from a barrier after every stage
    is built). `flags`: more vpipe-train options (the default lr is 0.001, plain SGD)."""
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--threads", "1"]
    assert train_main([*argv, "--print-every", str(10**9), "--lr", "0.001", *flags]) == 0
    with open(out / "run" / "metrics.csv") as file:
        return float(list(csv.DictReader(file))[-1]["samples_per_s"])


def busy_ms(run_dir: Path, stage: int, skip: int, by_cpu: bool) -> float:
    """Median busy milliseconds per micro-batch (its forward and backward) of a stage after
    the first `skip` micro-batches (warm-up), on the clock `vpipe-train --report` uses
    (`busy_s`); the last two micro-batches, which the run's end may cut short, are left out."""
    per_microbatch: dict[int, float] = {}
    for e in read_events(run_dir / f"events_stage{stage}.csv"):
        if e.microbatch >= skip:
            per_microbatch[e.microbatch] = per_microbatch.get(e.microbatch, 0.0) + busy_s(e, by_cpu)
    complete = [ms for i, ms in per_microbatch.items() if i + 1 < max(per_microbatch)]
    return statistics.median(complete) * 1e3


def throughput(out: Path, steps: int) -> Throughput:
    """Train `out`'s pipeline (as `samples_per_s`) and measure its samples/s on both clocks."""
    wall = samples_per_s(out, steps)
    pipeline = load_pipeline(out / "pipeline.yaml")
    stages = len(pipeline.stages)
    slowest = max(busy_ms(out / "run", k, 2 * stages, by_cpu=True) for k in range(stages))
    return Throughput(wall, pipeline.batch_size / (slowest / 1e3))


def interleaved_throughput(outs: dict[str, Path], steps: int, rounds: int) -> dict[str, Throughput]:
    """Each pipeline's median samples/s (per clock) over `rounds` rounds, run in turn and in
    reverse order every other round, so that a drift of the machine's speed falls on all of
    them alike."""
    names = list(outs)
    timed: dict[str, list[Throughput]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            timed[name].append(throughput(outs[name], steps))
    return {
        name: Throughput(
            statistics.median(t.wall for t in runs), statistics.median(t.cpu for t in runs)
        )
        for name, runs in timed.items()
    }


class Steal:
    """The share of the machine's CPU time the hypervisor gave to other guests while the block
    ran (Linux's "steal" in /proc/stat; vmstat's st): printed beside every timing so a reader
    sees how busy the host was. None where the kernel does not report it."""

    def __init__(self) -> None:
        self.share: float | None = None

    def __str__(self) -> str:
        if self.share is None:
            return "steal not reported"
        return f"the hypervisor took {self.share:.0%} of the CPU time meanwhile (steal)"


@contextlib.contextmanager
def measuring_steal() -> Iterator[Steal]:
    steal = Steal()
    before = _cpu_ticks()
    yield steal
    after = _cpu_ticks()
    if before is not None and after is not None:
        total = sum(after) - sum(before)
        steal.share = (after[7] - before[7]) / total if total else 0.0


class Others:
    """The share of the machine's CPU time that others took while the block ran: processes
    other than this one and its finished children (other users' work), and the hypervisor
    (steal). They only slow a run: printed beside a timing so a reader sees how busy the
    machine was."""

    def __init__(self) -> None:
        self.share = 0.0

    def __str__(self) -> str:
        return f"others took {self.share:.0%} of the machine's CPU time meanwhile"


@contextlib.contextmanager
def measuring_others() -> Iterator[Others]:
    others = Others()
    before, own = _busy_and_total_ticks(), _own_cpu_s()
    yield others
    after, own = _busy_and_total_ticks(), _own_cpu_s() - own
    busy = (after[0] - before[0]) / os.sysconf("SC_CLK_TCK")  # the machine's, ours included
    total = (after[1] - before[1]) / os.sysconf("SC_CLK_TCK")
    others.share = max(0.0, busy - own) / total if total else 0.0


def await_quiet(limit_s: float = 60.0) -> None:
    """Wait until the machine's CPU is idle (others' work only slows a run), at most limit_s."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = _busy_and_total_ticks()
        time.sleep(1.0)
        after = _busy_and_total_ticks()
        total = after[1] - before[1]
        if total and 1 - (after[0] - before[0]) / total >= QUIET:
            return


def _busy_and_total_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the machine so far; steal counts as busy (others' use)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _own_cpu_s() -> float:
    """CPU seconds of this process and every process it started, finished or not: its waited
    children, and those still in the process table with what they waited for (the stages are
    children of the fork server, which lives on: runtime/forkstart.py)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total + _descendants_ticks() / os.sysconf("SC_CLK_TCK")


def _descendants_ticks() -> int:
    """CPU ticks of this process's descendants in /proc: each one's own and its waited
    children's (utime, stime, cutime, cstime)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited meanwhile: its parent waited for it, or will
            continue
        pid = int(stat.parent.name)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = sum(int(x) for x in fields[11:15])
    total, unvisited = 0, list(children.get(os.getpid(), []))
    while unvisited:
        pid = unvisited.pop()
        total += ticks[pid]
        unvisited += children.get(pid, [])
    return total


def _cpu_ticks() -> list[int] | None:
    """The machine's CPU ticks by kind (user, nice, system, idle, iowait, irq, softirq, steal)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    return [int(x) for x in fields[1:9]] if fields[0] == "cpu" and len(fields) > 8 else None
