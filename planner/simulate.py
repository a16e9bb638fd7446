"""A small discrete-event simulation of a synchronous schedule: when each action runs.

It gives the iteration time of 1F1B-with-flush and GPipe (the planner optimises the slowest
stage; the simulation turns that into time per mini-batch, bubbles included), and the same
timeline is what the runtime's measured one is compared with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vpipe.common.errors import VpipeError
from vpipe.common.schedules import BACKWARD, FORWARD, Action, schedule


@dataclass(frozen=True)
class Event:
    stage: int
    action: Action
    start_ms: float
    end_ms: float


@dataclass(frozen=True)
class Timeline:
    events: tuple[Event, ...]
    stages: int

    @property
    def makespan_ms(self) -> float:
        return max((e.end_ms for e in self.events), default=0.0)

    @property
    def bubble_fraction(self) -> float:
        """Share of stage-time spent idle between the first start and the last end."""
        busy = sum(e.end_ms - e.start_ms for e in self.events)
        span = self.makespan_ms * self.stages
        return 1 - busy / span if span else 0.0


def simulate(
    schedule_name: str,
    microbatches: int,
    forward_ms: Sequence[float],
    backward_ms: Sequence[float],
    transfer_ms: Sequence[float],
) -> Timeline:
    """Run every stage's action list; `transfer_ms[s]` delays tensors between s and s + 1."""
    stages = len(forward_ms)
    plans = schedule(schedule_name, stages, microbatches)
    done: dict[tuple[int, str, int], float] = {}
    free = [0.0] * stages
    cursor = [0] * stages
    events: list[Event] = []
    progress = True
    while progress:
        progress = False
        for s in range(stages):
            while cursor[s] < len(plans[s]):
                action = plans[s][cursor[s]]
                ready = _ready(done, s, stages, action, transfer_ms)
                if ready is None:
                    break
                start = max(free[s], ready)
                length = forward_ms[s] if action.kind == FORWARD else backward_ms[s]
                free[s] = start + length
                done[s, action.kind, action.microbatch] = free[s]
                events.append(Event(s, action, start, free[s]))
                cursor[s] += 1
                progress = True
    if any(c < len(p) for c, p in zip(cursor, plans, strict=True)):
        raise VpipeError(f"schedule {schedule_name} deadlocks with {stages} stages")
    return Timeline(tuple(events), stages)


def _ready(
    done: dict[tuple[int, str, int], float],
    s: int,
    stages: int,
    action: Action,
    transfer_ms: Sequence[float],
) -> float | None:
    """When the inputs of `action` on stage s are there, or None if not yet produced."""
    i = action.microbatch
    if action.kind == FORWARD:
        if s == 0:
            return 0.0
        upstream = done.get((s - 1, FORWARD, i))
        return None if upstream is None else upstream + transfer_ms[s - 1]
    if s == stages - 1:
        return done.get((s, FORWARD, i))
    downstream = done.get((s + 1, BACKWARD, i))
    return None if downstream is None else downstream + transfer_ms[s]
