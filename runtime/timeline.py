"""run/timeline.png: one row per stage (per replica of a replicated one), each action a bar on
the run's clock, so the fill, the steady pattern and the waiting show at a glance
(`vpipe-train --report`)."""

from __future__ import annotations

from pathlib import Path

from vpipe.common.plotting import pyplot, save_figure
from vpipe.common.schedules import BACKWARD, FORWARD
from vpipe.runtime.report import RunReport

# the run's start (filling, then the steady pattern): a whole long run is a solid smear at any
# width
MICROBATCHES_PER_STAGE = 8


def draw_timeline(report: RunReport, recomputes: list[bool], path: Path) -> None:
    """One row per process (a stage, or a replica of one): forwards and backwards as bars on the
    run's clock, gaps where it waited; the backwards of a stage that recomputes are hatched
    (they include the recomputed forwards). `recomputes`: per stage."""
    plt = pyplot()
    start = min(e.start_s for stage in report.events for e in stage)
    first = min(e.microbatch for stage in report.events for e in stage)  # resumed: not 0
    total = 1 + max(e.microbatch for stage in report.events for e in stage) - first
    shown = min(total, MICROBATCHES_PER_STAGE * len(report.events))
    fig, ax = plt.subplots(figsize=(12, 1 + 0.6 * len(report.events)))
    for k, stage_events in enumerate(report.events):
        for kind, colour in ((FORWARD, "#4C72B0"), (BACKWARD, "#DD8452")):
            bars = [  # from the end of the wait: an action waits first, then computes
                ((e.start_s + e.wait_s - start) * 1e3, (e.end_s - e.start_s - e.wait_s) * 1e3)
                for e in stage_events
                if e.action == kind and e.microbatch < first + shown
            ]
            ax.broken_barh(
                bars,
                (k - 0.4, 0.8),
                facecolors=colour,
                hatch="//" if kind != FORWARD and recomputes[report.stages[k].index] else None,
                label=("forward" if kind == FORWARD else "backward") if k == 0 else None,
            )
    ax.set_yticks(range(len(report.events)), [f"stage {s.label}" for s in report.stages])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the first action")
    window = f", the first {shown} of {total} micro-batches" if shown < total else ""
    ax.set_title(
        f"{report.schedule}: bubble {report.bubble_fraction:.0%} measured, "
        f"{report.predicted_bubble:.0%} predicted (whole run){window}"
    )
    ax.legend(loc="upper right")
    save_figure(fig, path)
