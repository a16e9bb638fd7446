"""What a run records of its changing stage layout, a row per event: the switches it made
(run/switches.csv) and --adapt's decisions (run/adapt.csv). No torch here: `--report` reads
them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vpipe.common.units import human_bytes

DECISIONS = "adapt.csv"


@dataclass(frozen=True)
class Moved:
    """The nodes that pass from stage `source` to stage `target` at a switch."""

    source: int
    target: int
    nodes: int


@dataclass(frozen=True)
class AdaptDecision:
    """One check of `--adapt`, as run/adapt.csv records it."""

    step: int  # steps done when it was made
    measured_ms: str  # per stage, busy ms per micro-batch over the window ("a b ...")
    period_ms: float  # the pipeline's wall ms per micro-batch over the window (its pace)
    ratios: str  # per stage, measured over the plan's predicted compute
    speeds: str  # per stage index, the device speeds a re-plan assumed ("" if none)
    current_ms: float  # the running plan's slowest stage at those speeds
    planned_ms: float  # the new plan's (= current_ms when not re-planned)
    switched: bool
    reason: str
    settled: bool = False  # no more checks: on the faster of this split and the one before
    seconds: float = 0.0  # the check on rank 0: measuring, planning, and a new plan's codegen


SWITCHES = "switches.csv"  # in run/: one SwitchRecord per switch, by rank 0


@dataclass(frozen=True)
class SwitchRecord:
    """One switch, as rank 0 logs it (a line, and a row of run/switches.csv)."""

    step: int  # steps done before it
    start_s: float  # when every stage had drained, on the events' clock (perf_counter)
    seconds: float  # the transfer and rebuild
    nodes: int  # that changed stage
    bytes: int  # weights, buffers and optimizer state sent
    moves: str  # "3 nodes from stage 0 to stage 1, ..."
    pipeline: str  # the pipeline.yaml run after it

    @classmethod
    def of(
        cls, step: int, start_s: float, seconds: float, found: Sequence[Moved], sent: int, to: Path
    ) -> SwitchRecord:
        parts = [
            f"{m.nodes} node{'s' * (m.nodes != 1)} from stage {m.source} to stage {m.target}"
            for m in found
            if m.nodes
        ]
        nodes = sum(m.nodes for m in found)
        return cls(step, start_s, seconds, nodes, sent, ", ".join(parts), str(to))

    def line(self) -> str:
        if not self.moves:
            return f"step {self.step}: switched plans; no node changed stage"
        return (
            f"step {self.step}: moved {self.moves} ({human_bytes(self.bytes)}) in "
            f"{self.seconds * 1e3:.0f} ms"
        )
