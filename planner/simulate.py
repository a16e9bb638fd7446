"""A small discrete-event simulation of a synchronous schedule: when each action runs.

It gives the iteration time of 1F1B-with-flush and GPipe (the planner optimises the slowest
stage; the simulation turns that into time per mini-batch, bubbles included), asp's period in
its steady state (`asp_period_ms`: no flush, but a stage still waits on the dependency chain
through its neighbours), and the same timeline is what the runtime's measured one is compared
with.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vpipe.common.errors import VpipeError
from vpipe.common.schedules import BACKWARD, FORWARD, Action, run_actions, schedule


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
    gradient_ms: Sequence[float] | None = None,
) -> Timeline:
    """Run every stage's action list; `transfer_ms[s]` delays activations from s to s + 1, and
    `gradient_ms[s]` gradients back from s + 1 to s (default: as `transfer_ms`)."""
    plans = schedule(schedule_name, len(forward_ms), microbatches)
    back = transfer_ms if gradient_ms is None else gradient_ms
    return walk(schedule_name, plans, at_means(forward_ms, backward_ms), transfer_ms, back)


def simulate_asp(
    microbatches: int,
    forward_ms: Sequence[float],
    backward_ms: Sequence[float],
    transfer_ms: Sequence[float],
    gradient_ms: Sequence[float] | None = None,
) -> Timeline:
    """asp's one 1F1B stream of `microbatches`, no flush (fill, steady state, drain)."""
    plans = run_actions("asp", len(forward_ms), 1, microbatches)
    back = transfer_ms if gradient_ms is None else gradient_ms
    return walk("asp", plans, at_means(forward_ms, backward_ms), transfer_ms, back)


def asp_period_ms(
    busy_ms: Sequence[float],
    transfer_ms: Sequence[float],
    gradient_ms: Sequence[float] | None = None,
) -> float:
    """asp's time per micro-batch in its steady state, which `simulate_asp` reaches, for stages
    busy `busy_ms[k]` per micro-batch (forward and backward): the largest cycle mean of its
    max-plus system. Stage k's steady state runs F(j + S - 1 - k) then B(j), so for stages
    s..e the loop B_s(i) -> F_s -> F_s+1 -> ... -> F_e -> B_e -> ... -> B_s(i + e - s + 1) holds
    e - s + 1 micro-batches: the period is the largest, over every run of consecutive stages,
    of (their busy time + the messages' delays between them, both ways) / (their count). A
    single stage gives its own time; two stages, max(t0, t1, (t0 + t1 + d + g) / 2)."""
    back = transfer_ms if gradient_ms is None else gradient_ms
    best = 0.0
    for first in range(len(busy_ms)):
        total = 0.0
        for last in range(first, len(busy_ms)):
            total += busy_ms[last]
            if last > first:
                total += transfer_ms[last - 1] + back[last - 1]
            best = max(best, total / (last - first + 1))
    return best


Duration = Callable[[int, Action], float]  # milliseconds of an action on a stage


def at_means(forward_ms: Sequence[float], backward_ms: Sequence[float]) -> Duration:
    """Every forward of stage s takes forward_ms[s], every backward backward_ms[s]."""
    return lambda s, action: forward_ms[s] if action.kind == FORWARD else backward_ms[s]


def walk(
    schedule_name: str,
    plans: Sequence[Sequence[Action]],
    duration: Duration,
    transfer_ms: Sequence[float],
    gradient_ms: Sequence[float],
) -> Timeline:
    """Each action starts when its stage is free and its input has arrived; it lasts what
    `duration` says, asked once per action in the order they start."""
    stages = len(plans)
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
                ready = _ready(done, s, stages, action, transfer_ms, gradient_ms)
                if ready is None:
                    break
                start = max(free[s], ready)
                free[s] = start + duration(s, action)
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
    gradient_ms: Sequence[float],
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
    return None if downstream is None else downstream + gradient_ms[s]
