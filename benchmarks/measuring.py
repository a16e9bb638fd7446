"""What more than one benchmark measures the same way (imported by the scripts beside it)."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

from vpipe.runtime.cli import main as train_main


def samples_per_s(out: Path, steps: int, *flags: str) -> float:
    """Train `out`'s pipeline for `steps` steps, one thread per stage, and return samples/s over
    the run, as the stage that computes the loss measured it (from a barrier after every stage
    is built). `flags`: more vpipe-train options (the default lr is 0.001, plain SGD)."""
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--threads", "1"]
    assert train_main([*argv, "--print-every", str(10**9), "--lr", "0.001", *flags]) == 0
    with open(out / "run" / "metrics.csv") as file:
        return float(list(csv.DictReader(file))[-1]["samples_per_s"])


def interleaved_samples_per_s(outs: dict[str, Path], steps: int, rounds: int) -> dict[str, float]:
    """Each pipeline's median samples/s over `rounds` rounds, run in turn and in reverse order
    every other round, so that a drift of the machine's speed falls on all of them alike."""
    names = list(outs)
    timed: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            timed[name].append(samples_per_s(outs[name], steps))
    return {name: statistics.median(times) for name, times in timed.items()}
