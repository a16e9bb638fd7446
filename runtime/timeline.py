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
    if report.switches:  # the window around the first switch: the drain, the move, the refill
        around = _microbatch_at(report, report.switches[0].start_s)
        first = max(first, around - shown // 2)
    fig, ax = plt.subplots(figsize=(12, 1 + 0.6 * len(report.events)))
    for k, stage_events in enumerate(report.events):
        for kind, colour in ((FORWARD, "#4C72B0"), (BACKWARD, "#DD8452")):
            bars = [  # from the end of the wait: an action waits first, then computes
                ((e.start_s + e.wait_s - start) * 1e3, (e.end_s - e.start_s - e.wait_s) * 1e3)
                for e in stage_events
                if e.action == kind and first <= e.microbatch < first + shown
            ]
            ax.broken_barh(
                bars,
                (k - 0.4, 0.8),
                facecolors=colour,
                hatch="//" if kind != FORWARD and recomputes[report.stages[k].index] else None,
                label=("forward" if kind == FORWARD else "backward") if k == 0 else None,
            )
    for k, switch in enumerate(report.switches):
        at = (switch.start_s - start) * 1e3
        ax.axvspan(at, at + switch.seconds * 1e3, color="#55A868", alpha=0.5, lw=0)
        ax.axvline(at, color="#55A868", ls="--", label="plan switch" if k == 0 else None)
    if report.switches:
        times = [
            (e.start_s - start) * 1e3
            for stage in report.events
            for e in stage
            if first <= e.microbatch < first + shown
        ]
        ax.set_xlim(min(times), max(times) + 1)
    ax.set_yticks(range(len(report.events)), [f"stage {s.label}" for s in report.stages])
    ax.invert_yaxis()
    ax.set_xlabel("ms since the first action")
    window = f", the first {shown} of {total} micro-batches" if shown < total else ""
    if report.switches:
        window = f", micro-batches {first}-{first + shown - 1} around the first plan switch"
    ax.set_title(
        f"{report.schedule}: bubble {report.bubble_fraction:.0%} measured, "
        f"{report.predicted_bubble:.0%} predicted (whole run){window}"
    )
    ax.legend(loc="upper right")
    save_figure(fig, path)


def _microbatch_at(report: RunReport, when_s: float) -> int:
    """The micro-batch whose action was running, or last done, at `when_s` on any stage."""
    before = [e for stage in report.events for e in stage if e.start_s <= when_s]
    return max((e.microbatch for e in before), default=0)
