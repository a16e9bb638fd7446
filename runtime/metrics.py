"""Per-step loss and throughput as training goes: printed lines and out/run/metrics.csv.

Rows are written and flushed as each step finishes, so a run that is stopped keeps what it did.
A step's loss is the mean over its micro-batches (M under 1f1b and gpipe, one under asp).

Throughput is the steady state's: the samples of the steps after the first `uncounted` of this
run (the pipeline filling, first-call costs), over the time since the last of those finished.
A row of an uncounted step, and a run too short to have a counted one, give the rate since the
run began. The final line is the last row's rate.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from vpipe.common.errors import VpipeError

COLUMNS = ["step", "loss", "samples_per_s", "elapsed_s"]


class Metrics:
    def __init__(
        self,
        path: Path,
        per_step: int,
        batch_size: int,
        print_every: int,
        steps: int,
        steps_per_epoch: int = 0,
        first_step: int = 0,
        uncounted: int = 0,
    ) -> None:
        """`first_step` > 0 resumes: the rows of earlier steps are kept, and those of steps a
        stopped run did after its checkpoint go (this run does them again). `uncounted`: steps
        of this run left out of the throughput (all but its last, at most)."""
        self.per_step, self.batch_size, self.print_every = per_step, batch_size, print_every
        self.steps_per_epoch = steps_per_epoch or steps
        self.progress = None
        if sys.stdout.isatty():  # a bar for people; plain lines for logs and pipes
            self.progress = Progress(
                TextColumn("training"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()
            )
            self.task = self.progress.add_task("steps", total=steps)
            self.progress.start()
        kept = _rows_before(path, first_step) if first_step > 0 and path.is_file() else []
        tmp = path.with_name(f".{path.name}.tmp")  # a kill now loses none of the kept rows
        with open(tmp, "w", newline="") as file:
            csv.writer(file).writerows([COLUMNS, *kept])
        tmp.replace(path)
        self.file = open(path, "a", newline="")  # noqa: SIM115 (closed by close())
        self.writer = csv.writer(self.file)
        self.start = time.perf_counter()
        self.pending: list[float] = []
        self.first_step = self.step = first_step
        # the first step the throughput counts, and when the step before it finished
        self.counted = first_step + max(0, min(uncounted, steps - first_step - 1))
        self.counted_start = 0.0
        self.elapsed = 0.0  # when the newest step finished

    def add(self, loss: float) -> None:
        """One micro-batch's loss, in micro-batch order."""
        self.pending.append(loss)
        if len(self.pending) < self.per_step:
            return
        mean = sum(self.pending) / self.per_step
        self.pending.clear()
        self.elapsed = elapsed = time.perf_counter() - self.start
        if self.step + 1 == self.counted:
            self.counted_start = elapsed
        rate = self._rate(self.step + 1, elapsed)
        self.writer.writerow([self.step, f"{mean:.6f}", f"{rate:.2f}", f"{elapsed:.3f}"])
        self.file.flush()
        if self.step % self.print_every == 0:
            epoch, iteration = divmod(self.step, self.steps_per_epoch)
            self._print(
                f"Epoch {epoch}, Iteration {iteration}, Loss: {mean:.4f}, {rate:.1f} samples/s"
            )
        if self.progress is not None:
            self.progress.advance(self.task)
        self.step += 1

    def _print(self, line: str) -> None:
        if self.progress is not None:
            self.progress.console.print(line, highlight=False)
        else:
            print(line, flush=True)

    def _first_counted(self, done: int) -> tuple[int, float]:
        """The first step a rate over the steps before `done` counts, and when it began: the
        first counted step once one has finished, else the run's first."""
        if done > self.counted:
            return self.counted, self.counted_start
        return self.first_step, 0.0

    def _rate(self, done: int, elapsed: float) -> float:
        first, start = self._first_counted(done)
        seconds = elapsed - start
        return (done - first) * self.per_step * self.batch_size / seconds if seconds else 0.0

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        rate = self._rate(self.step, self.elapsed)
        first, _ = self._first_counted(self.step)
        counted = self.step - first
        line = f"throughput: {rate:.1f} samples/s over {counted} step{'s' * (counted != 1)}"
        if first > self.first_step:
            line += f" ({first}-{self.step - 1}; the first {first - self.first_step}, filling "
            line += "the pipeline, not counted)"
        print(line, flush=True)
        self.file.close()


def _rows_before(path: Path, step: int) -> list[list[str]]:
    return [row for row in read_rows(path) if row and row[0].isdigit() and int(row[0]) < step]


def last_rate(path: Path) -> float | None:
    """The run's samples/s over all its steps: the last row's (None: no step done yet)."""
    rows = read_rows(path)
    if not rows:
        return None
    try:
        return float(rows[-1][COLUMNS.index("samples_per_s")])
    except (IndexError, ValueError):
        last = ",".join(rows[-1])
        raise VpipeError(f"{path}: its last row {last!r} is damaged; {_FIX}") from None


_FIX = "vpipe-train writes it anew: re-run the training (or restore the file)"


def read_rows(path: Path) -> list[list[str]]:
    """The rows under the header; a file without vpipe's header (emptied, cut short, another
    file) is refused, not read as a run that did no steps."""
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    if not rows or rows[0] != COLUMNS:
        first = ",".join(rows[0]) if rows else "empty"
        raise VpipeError(
            f"{path}: not vpipe-train's metrics (first line: {first!r}, expected "
            f"{','.join(COLUMNS)!r}); {_FIX}"
        )
    return rows[1:]
