"""Typed records appended to a run's CSV files, one row each, and read back as those records:
the switches a run made (run/switches.csv) and --adapt's decisions (run/adapt.csv). The header
is the record's field names; a file with another header is refused, not misread."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from vpipe.common.errors import VpipeError

R = TypeVar("R")


def append_row(path: Path, record: Any) -> None:
    """Add `record` (a dataclass) to `path`, writing the header first in a new file."""
    names = [f.name for f in dataclasses.fields(record)]
    new = not path.is_file()
    with open(path, "a", newline="") as file:
        writer = csv.DictWriter(file, names)
        if new:
            writer.writeheader()
        writer.writerow(dataclasses.asdict(record))


def read_rows_as(path: Path, kind: type[R]) -> tuple[R, ...]:
    """Every row of `path` as a `kind` (its fields' types from the dataclass: int, float,
    bool, str); none if there is no such file (the run made no such record)."""
    if not path.is_file():
        return ()
    fields = {f.name: f.type for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    with open(path, newline="") as file:
        reader = csv.DictReader(file)
        if reader.fieldnames != list(fields):
            raise VpipeError(
                f"{path}: its header is not {','.join(fields)}; vpipe-train writes it anew: "
                "re-run the training"
            )
        return tuple(
            kind(**{name: _parsed(value, fields[name], path) for name, value in row.items()})
            for row in reader
        )


def _parsed(value: str, kind: Any, path: Path) -> Any:
    try:
        if kind in ("bool", bool):
            if value not in ("True", "False"):
                raise ValueError(value)
            return value == "True"
        if kind in ("int", int):
            return int(value)
        if kind in ("float", float):
            return float(value)
    except ValueError:
        raise VpipeError(f"{path}: {value!r} is not a {kind}; re-run the training") from None
    return value
