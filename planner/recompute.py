"""The cheapest recompute set that makes one stage fit its memory: exact, by dynamic programming.

Recomputing a node adds its forward time again and frees what it keeps for backward, but a
checkpoint segment keeps its inputs, and the largest segment is rebuilt whole during backward.
Those effects depend on which neighbours are recomputed too, so this is no plain knapsack: the
program walks the stage's nodes in order and carries, for every tensor still to be read, whether
it is already kept and whether its producer is in the open segment. Partial solutions with the
same such state are compared on (added time, kept bytes, peak transient, open segment's
transient) and only the Pareto-best survive, so the result is exactly `costmodel.kept_bytes`'s
optimum (tests check it against brute force).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from vpipe.planner.graph import PlanGraph

FRONT_LIMIT = 32  # Pareto points kept per state; past it the answer is no longer proven least


@dataclass(frozen=True)
class MemoryRoom:
    """Budget for a stage's recompute-dependent bytes: act x kept + trans x transient <= room."""

    room: float  # the device cap less weights, grads, optimizer state and received inputs
    act: float  # in-flight micro-batches x micro-batch fraction
    trans: float  # micro-batch fraction


class _Partial(NamedTuple):
    added_ms: float
    kept: int
    peak: int  # largest finished segment's transient, or the open one's if larger
    current: int  # transient of the open segment
    chosen: tuple[int, ...]  # recomputed nodes so far


@dataclass(frozen=True)
class Recompute:
    """The search's answer: `chosen` is None when nothing fits (proven only if `exact`)."""

    chosen: tuple[int, ...] | None  # recomputed nodes
    added_ms: float  # forward time they add
    exact: bool  # proven; False if the search had to be thinned


def cheapest_recompute(
    graph: PlanGraph, stage: Sequence[int], budget: MemoryRoom, max_added_ms: float = math.inf
) -> Recompute:
    """The recompute set of least added time that fits (`chosen` None if none fits)."""
    finals, exact = _solutions(graph, stage, budget, max_added_ms)
    if not finals:
        return Recompute(None, math.inf, exact)
    best = min(
        finals, key=lambda p: (p.added_ms, budget.act * p.kept + budget.trans * p.peak, p.chosen)
    )
    return Recompute(best.chosen, best.added_ms, exact)


def _solutions(
    graph: PlanGraph, stage: Sequence[int], budget: MemoryRoom, max_added_ms: float
) -> tuple[list[_Partial], bool]:
    """The Pareto-best complete recompute choices that fit `budget`, and whether that set is
    complete (False when a front had to be thinned to FRONT_LIMIT points)."""
    order = sorted(stage)
    members = set(order)
    last_use: dict[int, int] = {}
    for position, n in enumerate(order):
        for t in (*graph.reads[n], *graph.keeps[n]):
            if t in members:
                last_use[t] = position
    # state: ((tensor, kept, producer in the open segment), ...) for tensors still to be read
    states: dict[tuple, list[_Partial]] = {(): [_Partial(0.0, 0, 0, 0, ())]}
    exact = True
    for position, n in enumerate(order):
        following: dict[tuple, list[_Partial]] = {}
        for live, partials in states.items():
            for recompute in (False, True):
                step = _step(graph, n, recompute, dict((t, (k, o)) for t, k, o in live), members)
                tensors, extra_kept, extra_ms = step
                key = tuple(
                    sorted(
                        (t, k, o) for t, (k, o) in tensors.items() if last_use.get(t, -1) > position
                    )
                )
                for partial in partials:
                    moved = _advance(graph, partial, n, recompute, extra_kept, extra_ms)
                    if moved.added_ms > max_added_ms or not _fits(moved, budget):
                        continue
                    _insert(following.setdefault(key, []), moved)
        for key, front in following.items():
            if len(front) > FRONT_LIMIT:
                following[key] = _thin(front, budget)
                exact = False
        states = following
    return [p for partials in states.values() for p in partials], exact


def _step(
    graph: PlanGraph,
    n: int,
    recompute: bool,
    tensors: dict[int, tuple[bool, bool]],
    members: set[int],
) -> tuple[dict[int, tuple[bool, bool]], int, float]:
    """Apply node n's decision to the live tensors: (tensors, newly kept bytes, added ms)."""
    newly_kept = 0
    if recompute:
        for t in graph.reads[n]:
            if t in members and t in tensors and not any(tensors[t]):
                tensors[t] = (True, False)  # a segment input: checkpoint keeps it
                newly_kept += graph.out_bytes[t]
        if graph.owner[n] == n:
            tensors[n] = (False, True)
        return tensors, newly_kept, graph.fwd_ms[n]
    if graph.owner[n] == n:
        tensors[n] = (False, False)
    for t in graph.keeps[n]:
        if t in members and t in tensors and not tensors[t][0]:
            tensors[t] = (True, False)
            newly_kept += graph.out_bytes[t]
    # the run of recomputed nodes ends here: no tensor's producer is in an open segment now
    tensors = {t: (kept, False) for t, (kept, _) in tensors.items()}
    return tensors, newly_kept + graph.internal_bytes[n], 0.0


def _advance(
    graph: PlanGraph, partial: _Partial, n: int, recompute: bool, extra_kept: int, extra_ms: float
) -> _Partial:
    if recompute:
        current = partial.current + graph.transient_bytes(n)
        return _Partial(
            partial.added_ms + extra_ms,
            partial.kept + extra_kept,
            max(partial.peak, current),
            current,
            (*partial.chosen, n),
        )
    return _Partial(partial.added_ms, partial.kept + extra_kept, partial.peak, 0, partial.chosen)


def _fits(partial: _Partial, budget: MemoryRoom) -> bool:
    return budget.act * partial.kept + budget.trans * partial.peak <= budget.room


def _insert(front: list[_Partial], candidate: _Partial) -> None:
    """Keep `front` a Pareto set over (added time, kept, peak, current): drop the candidate if
    another point is no worse in all four, else drop what it is no worse than. (The hot loop of
    the planner: fields are unpacked once and compared as plain numbers.)"""
    added, kept, peak, current = candidate[:4]
    beaten = False
    for p in front:
        if p[0] <= added and p[1] <= kept and p[2] <= peak and p[3] <= current:
            return
        beaten = beaten or (added <= p[0] and kept <= p[1] and peak <= p[2] and current <= p[3])
    if beaten:
        front[:] = [
            p
            for p in front
            if not (added <= p[0] and kept <= p[1] and peak <= p[2] and current <= p[3])
        ]
    front.append(candidate)


def _thin(front: list[_Partial], budget: MemoryRoom) -> list[_Partial]:
    """Keep the fastest half and the leanest half of an oversized front (exactness is lost)."""
    fastest = sorted(front, key=lambda p: (p.added_ms, p.kept, p.peak))[: FRONT_LIMIT // 2]
    leanest = sorted(front, key=lambda p: (budget.act * p.kept + budget.trans * p.peak, p.added_ms))
    kept = {id(p): p for p in fastest}
    for p in leanest:
        if len(kept) >= FRONT_LIMIT:
            break
        kept.setdefault(id(p), p)
    return list(kept.values())
