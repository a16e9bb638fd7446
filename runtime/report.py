"""What a run did against what the plan predicted: per-stage time and memory, waiting, the
bubble, a timeline, and run/report.md to keep beside it.

Read from out/run/events_stage<k>.csv and stage_<k>.yaml (a replicated stage: one of each per
replica, `..._replica<i>`, and a row per replica, `k.i`). A stage's measured time per micro-batch
is its busy time (actions, less the time blocked waiting for a neighbour) over its micro-batches,
the figure the planner predicts as the stage's `time_ms`, on the stage's CPU time when it
computed on one torch thread or its machine ran more processes than it has cores: wall time also
counts the turns its core went to others (other processes, a hypervisor's steal), and one
thread's CPU time does not. With several threads and no more processes than cores, the CPU time
sums the threads and is not a duration, so wall time is used. Its measured memory is the peak in
stage_<k>.yaml, against the plan's predicted total. The bubble is the idle share of stage-time
between the run's first start and last end, the simulator's definition (`planner/simulate.py`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from vpipe.codegen.schema import Pipeline
from vpipe.common.schedules import FORWARD
from vpipe.planner.schema import StagePrediction
from vpipe.runtime.events import ActionEvent, read_events
from vpipe.runtime.layoutlog import DECISIONS, SWITCHES, AdaptDecision, SwitchRecord
from vpipe.runtime.metrics import last_rate
from vpipe.runtime.placement import Placement, placements
from vpipe.runtime.rowlog import read_rows_as
from vpipe.runtime.settings import RunSettings
from vpipe.runtime.stagelog import StageLog, load_stage_log

MEMORY_HINT = "rerun with --measure-memory to measure memory on CPU"
NOT_MEASURED = "—"
COLUMNS = (
    "stage",
    "predicted ms",
    "measured ms",
    "time ratio",
    "waiting ms",
    "idle",
    "predicted MiB",
    "measured MiB",
    "memory ratio",
)


def timed_by_cpu(
    processes: int, cores: int | None, threads: int | None, on_cpu: bool = True
) -> bool:
    """Whether a stage is timed by its process's CPU time rather than wall time: when it
    computed on one torch thread (its CPU time is then a duration that leaves out the turns its
    core went to others, a hypervisor's steal included), or when its machine ran more processes
    than cores (they took turns on a core, and wall time counts the others'). `threads` None:
    a stage that stopped before logging it, only the second rule. Never on a GPU, whose work
    the process's CPU time does not see."""
    return on_cpu and (threads == 1 or processes > (cores or 1))


def busy_s(event: ActionEvent, by_cpu: bool) -> float:
    """Seconds an action kept its stage busy: its CPU time, or its wall time less waiting."""
    return event.cpu_s if by_cpu else event.end_s - event.start_s - event.wait_s


def stage_ms(
    events: Sequence[ActionEvent],
    processes: int,
    cores: int | None,
    threads: int | None,
    on_cpu: bool = True,
) -> float:
    """A stage's busy milliseconds per micro-batch (its forward and backward), the figure the
    plan predicts as `time_ms`, on the clock `timed_by_cpu` chooses."""
    by_cpu = timed_by_cpu(processes, cores, threads, on_cpu)
    count = max(1, sum(e.action == FORWARD for e in events))
    return sum(busy_s(e, by_cpu) for e in events) / count * 1e3


@dataclass(frozen=True)
class StageReport:
    """One process: a stage, or one replica of a replicated stage."""

    index: int
    replica: int  # its place among the stage's replicas
    replicas: int  # the stage's processes, which share its micro-batches
    predicted: StagePrediction  # the plan's figures for the stage, as pipeline.yaml has them
    nodes: int  # graph nodes the plan gave it
    recomputed: int  # of those, the ones recomputed in backward
    # busy time per micro-batch it ran, waiting excluded (CPU time if `by_cpu`)
    measured_ms: float
    waiting_ms: float  # blocked on a neighbour, per micro-batch
    idle: float  # share of the run's span this stage did nothing (wall clock)
    processes: int  # processes its machine ran in the run, this one included
    cores: int | None  # that machine's cores
    threads: int | None  # its torch threads (None: its stage stopped before logging them)
    on_cpu: bool  # it computed on the CPU (not a GPU)
    measured_bytes: int | None  # peak memory; None: not measured (CPU without --measure-memory)

    @property
    def label(self) -> str:
        """`1`, or `1.0` for a replicated stage's replica 0."""
        return str(self.index) if self.replicas == 1 else f"{self.index}.{self.replica}"

    @property
    def by_cpu(self) -> bool:
        return timed_by_cpu(self.processes, self.cores, self.threads, self.on_cpu)

    @property
    def predicted_ms(self) -> float:
        """Per micro-batch it runs: the plan's time_ms is a replicated stage's replicas' shared
        time per micro-batch of the pipeline, each replica running one in r."""
        return self.predicted.time_ms * self.replicas

    @property
    def predicted_bytes(self) -> int:
        return self.predicted.memory.total


@dataclass(frozen=True)
class RunReport:
    schedule: str
    steps: int
    counted_memory: bool  # --measure-memory: on CPU every op was counted, which slows the run
    started: datetime  # when the run's settings were written, as its stages began
    plan_path: Path  # where pipeline.yaml says its plan is
    memory_note: str | None  # why some stage's memory is missing, if it is
    stages: tuple[StageReport, ...]  # one per process, in rank order
    bubble_fraction: float  # idle share of all stage-time over the run
    predicted_bubble: float  # the plan's simulated bubble (0 under asp)
    events: tuple[tuple[ActionEvent, ...], ...]  # per process, as `stages`
    batch_size: int  # samples per micro-batch
    predicted_samples_per_s: float
    measured_samples_per_s: float | None  # over the run, by wall clock (run/metrics.csv)
    switches: tuple[SwitchRecord, ...] = ()  # the plans it switched to (run/switches.csv)
    decisions: tuple[AdaptDecision, ...] = ()  # --adapt's checks (run/adapt.csv)


def build_report(pipeline: Pipeline, directory: Path, used: RunSettings) -> RunReport:
    """The last run in `directory`/run (`used`: its settings.yaml) against `pipeline`, the
    pipeline.yaml in `directory`."""
    run_dir = directory / "run"
    metrics = run_dir / "metrics.csv"
    schedule = used.schedule
    processes = placements(pipeline)
    events = tuple(tuple(read_events(run_dir / p.events_file)) for p in processes)
    start = min(e.start_s for stage in events for e in stage)
    span = max(e.end_s for stage in events for e in stage) - start
    stages, busy_total, unlogged = [], 0.0, []
    for place, stage_events in zip(processes, events, strict=True):
        spec = pipeline.stages[place.stage]
        count = max(1, sum(e.action == FORWARD for e in stage_events))
        busy = sum(busy_s(e, by_cpu=False) for e in stage_events)
        busy_total += busy
        log = _stage_log(run_dir, place)
        # a process that stopped before logging: assume this machine, every process on it
        local = log.local_processes if log else len(processes)
        cores = log.cpu_count if log else os.cpu_count()
        threads = log.threads if log else None
        on_cpu = log.device == "cpu" if log else True
        stages.append(
            StageReport(
                index=spec.index,
                replica=place.replica,
                replicas=place.replicas,
                predicted=spec.predicted,
                nodes=len(spec.nodes),
                recomputed=sum(len(segment) for segment in spec.recompute),
                measured_ms=stage_ms(stage_events, local, cores, threads, on_cpu),
                waiting_ms=sum(e.wait_s for e in stage_events) / count * 1e3,
                idle=1 - busy / span if span else 0.0,
                processes=local,
                cores=cores,
                threads=threads,
                on_cpu=on_cpu,
                measured_bytes=log.peak_memory_bytes if log else None,
            )
        )
        unlogged += [] if log else [stages[-1].label]
    return RunReport(
        schedule=schedule,
        steps=used.steps,
        counted_memory=used.measure_memory,
        started=datetime.fromtimestamp((run_dir / "settings.yaml").stat().st_mtime),
        plan_path=directory / pipeline.plan,
        memory_note=_memory_note(stages, unlogged),
        stages=tuple(stages),
        bubble_fraction=1 - busy_total / (span * len(stages)) if span else 0.0,
        predicted_bubble=pipeline.predicted.bubble_fraction if schedule != "asp" else 0.0,
        events=events,
        batch_size=pipeline.batch_size,
        predicted_samples_per_s=pipeline.predicted.throughput_samples_per_s,
        measured_samples_per_s=last_rate(metrics) if metrics.is_file() else None,
        switches=read_rows_as(run_dir / SWITCHES, SwitchRecord),
        decisions=read_rows_as(run_dir / DECISIONS, AdaptDecision),
    )


def _stage_log(run_dir: Path, place: Placement) -> StageLog | None:
    """The process's stage_<k>.yaml of this run; None if the run stopped before writing it, or
    if the one there is older than its events (an earlier run's)."""
    path = run_dir / place.log_file
    events = run_dir / place.events_file
    if not path.is_file() or path.stat().st_mtime < events.stat().st_mtime:
        return None
    return load_stage_log(path)


def _memory_note(stages: Sequence[StageReport], unlogged: Sequence[str]) -> str | None:
    if unlogged:
        return (
            f"memory of stage {', '.join(unlogged)} unknown: the run stopped before writing "
            "run/stage_<k>.yaml"
        )
    if any(s.measured_bytes is None for s in stages):
        return f"memory not measured: {MEMORY_HINT}"
    return None


def mib(n: float) -> str:
    """Bytes as MiB with three decimals, as the report's tables give them."""
    return f"{n / 2**20:.3f}"


def table_rows(report: RunReport) -> list[list[str]]:
    """The predicted-vs-measured rows under COLUMNS, for the terminal and report.md alike."""
    rows = []
    for s in report.stages:
        time_ratio = s.measured_ms / s.predicted_ms if s.predicted_ms else float("nan")
        measured, memory_ratio = NOT_MEASURED, NOT_MEASURED
        if s.measured_bytes is not None:
            measured = mib(s.measured_bytes)
            memory_ratio = (
                f"{s.measured_bytes / s.predicted_bytes:.2f}" if s.predicted_bytes else "nan"
            )
        rows.append(
            [
                s.label,
                f"{s.predicted_ms:.3f}",
                f"{s.measured_ms:.3f}",
                f"{time_ratio:.2f}",
                f"{s.waiting_ms:.3f}",
                f"{s.idle:.0%}",
                mib(s.predicted_bytes),
                measured,
                memory_ratio,
            ]
        )
    return rows


def timing_note(report: RunReport) -> str:
    """Which clock the measured times are on, and why; and whether counting memory slowed
    them."""
    cpu = [s for s in report.stages if s.by_cpu]
    threaded = all(s.threads for s in report.stages if not s.by_cpu)  # else an older run's
    several = "; several torch threads, whose CPU time is a sum" if threaded else ""
    wall = f"busy wall time per micro-batch (each action less its waiting{several})"
    note = f"measured ms: {wall}"
    if cpu:
        why = "; ".join(dict.fromkeys(_why_cpu(s) for s in cpu))
        note = f"measured ms: CPU time per micro-batch ({why})"
        if len(cpu) < len(report.stages):
            names = ", ".join(s.label for s in cpu)
            note = (
                f"measured ms: CPU time per micro-batch for stages {names} ({why}); "
                f"{wall} for the rest"
            )
    if report.counted_memory:
        note += (
            "; this run used --measure-memory, which on CPU slows every op: time a run without it"
        )
    return note


def _why_cpu(stage: StageReport) -> str:
    if stage.processes > (stage.cores or 1):
        return (
            f"{stage.processes} processes shared {stage.cores or 1} cores, and wall time counts "
            "others' turns"
        )
    return "one torch thread, and wall time counts others' turns on its core"


def bubble_line(report: RunReport) -> str:
    why = (
        "; asp plans none: the pipeline fills once, and the rest is waiting on neighbours"
        if report.schedule == "asp"
        else ""
    )
    return (
        f"bubble: measured {report.bubble_fraction:.1%}, predicted {report.predicted_bubble:.1%}"
        f" (idle share of stage-time{why})"
    )


def throughput_line(report: RunReport) -> str:
    """The run's samples/s by wall clock against the plan's, and what the slowest stage's
    measured time allows: a gap between the last two is time the stages did not compute
    (waiting, or the machine busy with others), which the per-stage ratios do not show."""
    slowest = max(s.measured_ms / s.replicas for s in report.stages)  # a stage's replicas share
    allowed = report.batch_size / (slowest / 1e3) if slowest else 0.0
    measured = report.measured_samples_per_s
    line = (
        f"throughput: measured {measured:.1f} samples/s by wall clock, "
        if measured is not None
        else "throughput: not measured (no step finished), "
    )
    return (
        line + f"predicted {report.predicted_samples_per_s:.1f}; the slowest stage's measured "
        f"time per micro-batch allows {allowed:.1f}"
    )


def layout_lines(report: RunReport) -> list[str]:
    """What changed the stage layout during the run: each switch, and --adapt's checks."""
    lines = []
    if report.decisions:
        switched = sum(d.switched for d in report.decisions)
        kept = [d for d in report.decisions if not d.switched]
        lines.append(
            f"--adapt: {len(report.decisions)} check{'s' * (len(report.decisions) != 1)}, "
            f"{switched} switch{'es' * (switched != 1)}"
            + (f"; kept the plan after step {', '.join(str(d.step) for d in kept)}" if kept else "")
            + " (run/adapt.csv has each one's figures)"
        )
    for switch in report.switches:
        lines.append(f"switched plans: {switch.line()}, to {switch.pipeline}")
    if report.switches:
        lines.append(
            "the per-stage figures above cover the whole run against the first plan's predictions"
        )
    return lines


def print_report(report: RunReport, console: Console) -> None:
    # nine columns in 80 characters: headers wrap between words, no rules between columns
    table = Table(
        title=f"predicted vs measured, {report.schedule}",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    for column in COLUMNS:
        table.add_column(column.replace(" ", "\n"), justify="right")
    for row in table_rows(report):
        table.add_row(*row)
    console.print(table)
    console.print(timing_note(report), highlight=False)
    if report.memory_note:
        console.print(report.memory_note, highlight=False)
    console.print(bubble_line(report), highlight=False)
    console.print(throughput_line(report), highlight=False)
    for line in layout_lines(report):
        console.print(line, highlight=False)
