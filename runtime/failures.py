"""One error per failed run: each stage's traceback goes to its log, the user sees one line.

When a stage fails, its neighbours fail too (they lose it), and every process has something
to say; printed, the real cause drowns among them. So a stage never prints its failure: it
appends the traceback to `run/logs/stage_<k>.log` and writes a small record beside it,
`stage_<k>.failure.json`, saying what failed, whether it is bad input, a bug or only the loss
of another stage, and when. The launcher reads the records and prints one line: the earliest
failure that is not a consequence, with the log that holds its traceback. A launched stage's
stderr goes to its log as well, C++'s included (gloo's complaints about closed connections).
A record the launcher cannot read as this version's (torn, or another vpipe's) counts as none:
that stage is reported by its exit status and its log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from vpipe.common.errors import Failed, VpipeError
from vpipe.common.records import Count, decode

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

SCHEMA_VERSION = 1  # of stage_<k>.failure.json
LOGS = "logs"
# what gloo and the process group say when the other end of a connection went away
PEER_GONE = re.compile(
    r"closed by peer|reset by peer|broken pipe|socket closed|connection refused|timed out",
    re.IGNORECASE,
)

# input: bad input (a VpipeError); bug: any other exception; lost: a consequence of another
# stage's failure; died: killed, or exited without a record (only the launcher sees this)
Kind = Literal["input", "bug", "lost", "died"]


class LostPeer(VpipeError):
    """This stage stopped because another one did: never the cause to report if there is
    another."""


@dataclass(frozen=True)
class Failure:
    """How one stage failed, as the launcher reads it."""

    rank: Count
    message: str  # one line
    kind: Kind
    time: float  # time.time() when it was caught: the earliest real failure is the cause
    log: str  # the stage's log, holding its traceback

    @property
    def status(self) -> int:
        """The command's exit status: 2 for bad input, 1 for a bug."""
        return 1 if self.kind in ("bug", "died") else 2

    def error(self, name: str | None = None) -> Failed:
        """The one line: `name` says which process failed (default `stage <rank>`, as in a
        straight pipeline, where they are the same)."""
        what = "its output" if self.kind == "died" else "full traceback"
        who = name or f"stage {self.rank}"
        return Failed(f"{who}: {self.message} ({what}: {self.log})", self.status)


def first_line(err: BaseException) -> str:
    """What a lost peer's error says, in one line, for the message that names the peer."""
    text = str(err).strip()
    return text.splitlines()[0] if text else "no reason given"


def log_path(run_dir: Path, rank: int) -> Path:
    return run_dir / LOGS / f"stage_{rank}.log"


def _record_path(run_dir: Path, rank: int) -> Path:
    return run_dir / LOGS / f"stage_{rank}.failure.json"


def clear(run_dir: Path) -> None:
    """Before a launch: an earlier run's logs and records must not pass for this run's."""
    shutil.rmtree(run_dir / LOGS, ignore_errors=True)


def run_logged(
    body: Callable[[], None], run_dir: Path, rank: int, capture_stderr: bool
) -> Failure | None:
    """Run stage `rank`'s `body`; if it raises, the traceback goes to the stage's log and its
    record beside it, and the record is returned. With `capture_stderr` (a stage the launcher
    started) everything the process writes to stderr goes to the log too."""
    log = log_path(run_dir, rank)
    _record_path(run_dir, rank).unlink(missing_ok=True)
    log.unlink(missing_ok=True)
    if capture_stderr:
        log.parent.mkdir(parents=True, exist_ok=True)
        sys.stderr.flush()
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, sys.stderr.fileno())
        os.close(fd)
    try:
        body()
    except Exception as err:
        return _record(err, run_dir, rank)
    return None


def _record(err: Exception, run_dir: Path, rank: int) -> Failure:
    caught = time.time()
    kind, message = _classify(err)
    log = log_path(run_dir, rank)
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    with log.open("a") as file:
        file.write("".join(traceback.format_exception(err)))
    failure = Failure(rank, message, kind, caught, str(log))
    # written whole or not at all: the launcher stops the other stages as soon as one fails
    partial = _record_path(run_dir, rank).with_suffix(".partial")
    partial.write_text(json.dumps({"schema_version": SCHEMA_VERSION, **asdict(failure)}))
    os.replace(partial, _record_path(run_dir, rank))
    return failure


def _classify(err: Exception) -> tuple[Kind, str]:
    if isinstance(err, LostPeer):
        return "lost", str(err)
    if isinstance(err, VpipeError):
        return "input", str(err)
    first = next((line for line in str(err).splitlines() if line.strip()), "")
    if isinstance(err, RuntimeError) and PEER_GONE.search(str(err)):
        return "lost", f"lost another stage: {first.strip()}"
    return "bug", f"{type(err).__name__}: {first.strip()}" if first else type(err).__name__


def cause(run_dir: Path, died: Mapping[int, ProcessFailure]) -> Failure:
    """The failure to report, of a launch whose stages `died` (by rank) as the launcher saw
    them: the earliest bad input or bug; else a stage that died without a record (a signal);
    else the earliest loss of another stage."""
    records = [r for r in map(_load, (run_dir / LOGS).glob("stage_*.failure.json")) if r]
    recorded = {r.rank for r in records}
    silent = [_silent(run_dir, rank, p) for rank, p in died.items() if rank not in recorded]
    real = [r for r in records if r.kind != "lost"]
    return min(real or silent or records, key=lambda r: r.time)


def _load(path: Path) -> Failure | None:
    """The record at `path`; None if it is gone, torn, or not one this version writes."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.pop("schema_version", None) != SCHEMA_VERSION:
        return None
    try:
        return decode(Failure, data, str(path), "failure record", "ignored")
    except VpipeError:
        return None


def _silent(run_dir: Path, rank: int, process: ProcessFailure) -> Failure:
    how = (
        f"was killed by {process.signal_name()}"
        if process.exitcode < 0
        else f"exited with status {process.exitcode} before saying why"
    )
    return Failure(rank, how, "died", process.timestamp, str(log_path(run_dir, rank)))
