"""Per-stage action timings: out/run/events_stage<k>.csv (a replica of a replicated stage:
events_stage<k>_replica<i>.csv, `runtime.placement`), written by each process, read by the
report.

One row per action (forward or backward of a micro-batch): start and end on the machine's
monotonic clock (comparable across the stages of one machine), the seconds spent blocked waiting
for a neighbour, the process's CPU seconds during the action, and its main thread's alone.
Recording costs four clock reads and a buffered row per action, so it is always on. No torch
here: `--report` reads them.

The header row is the file's version: a column added, removed or renamed changes it, and a file
whose header is not this version's is refused with the command that writes it anew. A column
whose meaning changes is renamed, so that the header changes with it. (A `schema_version` line
would make the file something other than CSV for the spreadsheets and pandas it is also for.)
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import NamedTuple

from vpipe.common.errors import VpipeError

COLUMNS = ["action", "microbatch", "start_s", "end_s", "wait_s", "cpu_s", "main_s"]
REMEDY = "vpipe-train writes it anew: train again"


class ActionEvent(NamedTuple):
    """One action as it ran: seconds on the machine's monotonic clock (perf_counter), the part
    of it spent blocked waiting for a neighbour's tensors, and the CPU seconds the process used
    meanwhile (what the stage computed when more processes than cores share the machine), and
    the part of those its main thread used (the rest is gloo's threads moving messages). A
    named tuple: made between every two actions, where a frozen dataclass costs more."""

    action: str  # F or B
    microbatch: int
    start_s: float
    end_s: float
    wait_s: float
    cpu_s: float
    main_s: float


class EventLog:
    """Writes each action's row as it finishes (through the file's buffer), so memory stays
    flat however long the run, and a run that is stopped keeps the rows it wrote."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "w", newline="")  # noqa: SIM115 (closed by close())
        csv.writer(self.file).writerow(COLUMNS)

    def add(self, e: ActionEvent) -> None:
        # the line csv.writer would write (nothing here needs quoting), formatted directly:
        # this runs between every two actions
        self.file.write(
            f"{e.action},{e.microbatch},{e.start_s:.6f},{e.end_s:.6f},{e.wait_s:.6f},"
            f"{e.cpu_s:.6f},{e.main_s:.6f}\r\n"
        )

    def close(self) -> None:
        self.file.close()


def read_events(path: Path) -> list[ActionEvent]:
    if not path.is_file():
        raise VpipeError(f"{path} is missing: run vpipe-train first (it writes one per stage)")
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
        header = reader.fieldnames
    if header != COLUMNS:
        first = ",".join(header) if header else "empty"
        raise VpipeError(
            f"{path}: not vpipe-train's events (first line: {first!r}, expected "
            f"{','.join(COLUMNS)!r}); {REMEDY}"
        )
    try:
        return [_event(row) for row in rows]
    except (TypeError, ValueError):  # a field missing (None) or not a number
        raise VpipeError(f"{path}: a row is damaged; {REMEDY}") from None


def _event(row: dict[str, str]) -> ActionEvent:
    return ActionEvent(
        row["action"],
        int(row["microbatch"]),
        float(row["start_s"]),
        float(row["end_s"]),
        float(row["wait_s"]),
        float(row["cpu_s"]),
        float(row["main_s"]),
    )
