"""Per-stage action timings: out/run/events_stage<k>.csv, written by each stage, read by the report.

One row per action (forward or backward of a micro-batch): start and end on the machine's
monotonic clock (comparable across the stages of one machine), the seconds spent blocked waiting
for a neighbour, and the process's CPU seconds during the action. Recording costs three clock
reads and a buffered row per action, so it is always on.
"""

from __future__ import annotations

import csv
from pathlib import Path

from vpipe.common.errors import VpipeError
from vpipe.runtime.executor import ActionEvent

COLUMNS = ["action", "microbatch", "start_s", "end_s", "wait_s", "cpu_s"]


class EventLog:
    """Writes each action's row as it finishes (through the file's buffer), so memory stays
    flat however long the run, and a run that is stopped keeps the rows it wrote."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w", newline="")  # noqa: SIM115 (closed by close())
        self.writer = csv.writer(self.file)
        self.writer.writerow(COLUMNS)

    def add(self, e: ActionEvent) -> None:
        self.writer.writerow(
            [
                e.action,
                e.microbatch,
                *(f"{t:.6f}" for t in (e.start_s, e.end_s, e.wait_s, e.cpu_s)),
            ]
        )

    def close(self) -> None:
        self.file.close()


def read_events(path: Path) -> list[ActionEvent]:
    if not path.is_file():
        raise VpipeError(f"{path} is missing: run vpipe-train first (it writes one per stage)")
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    if rows and list(rows[0]) != COLUMNS:
        raise VpipeError(f"{path}: expected columns {', '.join(COLUMNS)}")
    return [
        ActionEvent(
            r["action"],
            int(r["microbatch"]),
            float(r["start_s"]),
            float(r["end_s"]),
            float(r["wait_s"]),
            float(r["cpu_s"]),
        )
        for r in rows
    ]
