"""What a run did against what the plan predicted: per-stage time, waiting, the bubble, a timeline.

Read from out/run/events_stage<k>.csv. A stage's measured time per micro-batch is its busy time
(actions, less the time blocked waiting for a neighbour) over its micro-batches, the figure the
planner predicts as the stage's `time_ms`. The bubble is the idle share of stage-time between the
run's first start and last end, the simulator's definition (`planner/simulate.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vpipe.codegen.schema import Pipeline
from vpipe.common.plotting import pyplot, save_figure
from vpipe.common.schedules import BACKWARD, FORWARD
from vpipe.runtime.events import read_events
from vpipe.runtime.executor import ActionEvent


@dataclass(frozen=True)
class StageReport:
    index: int
    predicted_ms: float  # the plan's time per micro-batch for the stage
    measured_ms: float  # busy time per micro-batch, waiting excluded
    waiting_ms: float  # blocked on a neighbour, per micro-batch
    idle: float  # share of the run's span this stage did nothing


@dataclass(frozen=True)
class RunReport:
    schedule: str
    stages: tuple[StageReport, ...]
    bubble_fraction: float  # idle share of all stage-time over the run
    predicted_bubble: float  # the plan's simulated bubble (0 under asp)
    events: tuple[tuple[ActionEvent, ...], ...]


def build_report(pipeline: Pipeline, run_dir: Path, schedule: str) -> RunReport:
    events = tuple(
        tuple(read_events(run_dir / f"events_stage{k}.csv")) for k in range(len(pipeline.stages))
    )
    start = min(e.start_s for stage in events for e in stage)
    span = max(e.end_s for stage in events for e in stage) - start
    stages, busy_total = [], 0.0
    for spec, stage_events in zip(pipeline.stages, events, strict=True):
        count = max(1, sum(e.action == FORWARD for e in stage_events))
        busy = sum(e.end_s - e.start_s - e.wait_s for e in stage_events)
        waiting = sum(e.wait_s for e in stage_events)
        busy_total += busy
        stages.append(
            StageReport(
                index=spec.index,
                predicted_ms=spec.predicted.time_ms,
                measured_ms=busy / count * 1e3,
                waiting_ms=waiting / count * 1e3,
                idle=1 - busy / span if span else 0.0,
            )
        )
    return RunReport(
        schedule=schedule,
        stages=tuple(stages),
        bubble_fraction=1 - busy_total / (span * len(stages)) if span else 0.0,
        predicted_bubble=pipeline.predicted.bubble_fraction if schedule != "asp" else 0.0,
        events=events,
    )


def print_report(report: RunReport, console: Console) -> None:
    table = Table(title=f"predicted vs measured, {report.schedule}")
    for column in (
        "stage",
        "predicted ms",
        "measured ms",
        "measured/predicted",
        "waiting ms",
        "idle",
    ):
        table.add_column(column, justify="right")
    for s in report.stages:
        ratio = s.measured_ms / s.predicted_ms if s.predicted_ms else float("nan")
        table.add_row(
            str(s.index),
            f"{s.predicted_ms:.3f}",
            f"{s.measured_ms:.3f}",
            f"{ratio:.2f}",
            f"{s.waiting_ms:.3f}",
            f"{s.idle:.0%}",
        )
    console.print(table)
    console.print(
        f"bubble: measured {report.bubble_fraction:.1%}, predicted {report.predicted_bubble:.1%}"
        " (idle share of stage-time)",
        highlight=False,
    )


def draw_timeline(report: RunReport, recomputes: list[bool], path: Path) -> None:
    """One row per stage: forwards and backwards as bars on the run's clock, gaps where the
    stage waited; the backwards of a stage that recomputes are hatched (they include the
    recomputed forwards)."""
    plt = pyplot()
    start = min(e.start_s for stage in report.events for e in stage)
    fig, ax = plt.subplots(figsize=(12, 1 + 0.6 * len(report.events)))
    for k, stage_events in enumerate(report.events):
        for kind, colour in ((FORWARD, "#4C72B0"), (BACKWARD, "#DD8452")):
            bars = [  # from the end of the wait: an action waits first, then computes
                ((e.start_s + e.wait_s - start) * 1e3, (e.end_s - e.start_s - e.wait_s) * 1e3)
                for e in stage_events
                if e.action == kind
            ]
            ax.broken_barh(
                bars,
                (k - 0.4, 0.8),
                facecolors=colour,
                hatch="//" if kind != FORWARD and recomputes[k] else None,
                label=("forward" if kind == FORWARD else "backward") if k == 0 else None,
            )
    ax.set_yticks(range(len(report.events)), [f"stage {k}" for k in range(len(report.events))])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the first action")
    ax.set_title(
        f"{report.schedule}: bubble {report.bubble_fraction:.0%} measured, "
        f"{report.predicted_bubble:.0%} predicted"
    )
    ax.legend(loc="upper right")
    save_figure(fig, path)
