"""run/report.md: a run against its predictions, its timeline and the plan it came from, to
keep and share beside the run's files (`vpipe-train --report` writes it with the printed
report, from the same `RunReport`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from vpipe.runtime.report import (
    COLUMNS,
    RunReport,
    StageReport,
    bubble_line,
    layout_lines,
    mib,
    table_rows,
    throughput_line,
    timing_note,
)


def write_markdown(report: RunReport, path: Path, timeline: Path) -> None:
    """run/report.md: the run against its predictions, its timeline, and the plan it came
    from, to keep and share beside the run's files (links are relative to `path`)."""
    here = path.parent
    plan_link = Path(os.path.relpath(report.plan_path, here)).as_posix()
    plan_name = os.path.normpath(report.plan_path)
    lines = [
        f"# vpipe run report: {report.schedule}, {report.started:%Y-%m-%d %H:%M}",
        "",
        f"{_shape(report.stages)}, {report.steps} steps.",
        "",
        "## Predicted vs measured",
        "",
        *_markdown_table(list(COLUMNS), table_rows(report)),
        "",
        f"{_sentence(timing_note(report))}  ",
    ]
    if report.memory_note:
        lines.append(f"{_sentence(report.memory_note)}  ")
    lines += [
        f"{_sentence(bubble_line(report))}  ",
        f"{_sentence(throughput_line(report))}  ",
        *(f"{_sentence(line)}  " for line in layout_lines(report)),
        "",
        f"![timeline: one row per stage]({Path(os.path.relpath(timeline, here)).as_posix()})",
        "",
        "## The plan it came from",
        "",
        f"[{plan_name}]({plan_link}); predicted per micro-batch, memory in MiB.",
        "",
    ]
    lines += [*_plan_tables(report.stages), ""]
    path.write_text("\n".join(lines))


def _plan_tables(stages: Sequence[StageReport]) -> list[str]:
    """Nodes and predicted time per stage (once for its replicas), then the predicted memory by
    kind: whatever fields the plan's prediction records carry."""
    stages = [s for s in stages if s.replica == 0]
    time_fields = _figures(stages[0].predicted)
    memory_fields = _figures(stages[0].predicted.memory)
    time_rows = [
        [
            str(s.index),
            str(s.nodes),
            str(s.recomputed),
            *(f"{getattr(s.predicted, name):.3f}" for name in time_fields),
        ]
        for s in stages
    ]
    memory_rows = [
        [
            str(s.index),
            *(mib(getattr(s.predicted.memory, name)) for name in memory_fields),
            mib(s.predicted_bytes),
        ]
        for s in stages
    ]
    return [
        *_markdown_table(
            ["stage", "nodes", "recomputed", *(_label(n) for n in time_fields)], time_rows
        ),
        "",
        *_markdown_table(["stage", *memory_fields, "total"], memory_rows),
    ]


def _shape(stages: Sequence[StageReport]) -> str:
    """`2 stages`, or `2 stages on 3 processes` when replicated."""
    count = len({s.index for s in stages})
    on = f" on {len(stages)} processes" if len(stages) > count else ""
    return f"{count} stage{'s' * (count != 1)}{on}"


def _figures(record: Any) -> list[str]:
    """The names of a record's numeric fields, in their order."""
    return [
        f.name
        for f in fields(record)
        if isinstance(getattr(record, f.name), (int, float))
        and not isinstance(getattr(record, f.name), bool)
    ]


def _label(name: str) -> str:
    """compute_ms -> compute ms."""
    return name.replace("_", " ")


def _sentence(line: str) -> str:
    return f"{line[0].upper()}{line[1:]}."


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        f"| {' | '.join(header)} |",
        f"|{'|'.join(['---:'] * len(header))}|",
        *(f"| {' | '.join(row)} |" for row in rows),
    ]
