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
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from vpipe.planner.graph import PlanGraph

# Pareto points kept per state: SEARCH_WORK / (stage nodes x graph nodes), at least MIN_FRONT, so
# a search costs about the same however long the stage, and a whole plan about the same however
# large the graph: small graphs get exact searches, large ones thinned fronts. Past the limit the
# answer is no longer proven least.
SEARCH_WORK = 1_000_000
MIN_FRONT = 8


@dataclass(frozen=True)
class MemoryRoom:
    """Budget for a stage's recompute-dependent bytes: in_flight x kept + transient <= room."""

    room: float  # the device cap less weights, grads, optimizer state and received inputs
    in_flight: int  # micro-batches whose kept tensors are alive at once


class _Partial(NamedTuple):
    added_ms: float
    kept: int
    memory: float  # in_flight x kept + peak: what the budget is checked against
    current: int  # transient of the open segment
    peak: int  # largest finished segment's transient, or the open one's if larger
    chosen: tuple[int, ...]  # recomputed nodes so far


@dataclass(frozen=True)
class Recompute:
    """The search's answer: `chosen` is None when nothing fits (proven only if `exact`)."""

    chosen: tuple[int, ...] | None  # recomputed nodes
    added_ms: float  # forward time they add
    exact: bool  # proven; False if the search had to be thinned
    kept: int = 0  # bytes the stage then keeps per micro-batch (costmodel.kept_bytes's figures)
    segment: int = 0  # and the largest segment's transient


def cheapest_recompute(
    graph: PlanGraph,
    stage: Sequence[int],
    budget: MemoryRoom,
    max_added_ms: float = math.inf,
    sent: Collection[int] = (),
) -> Recompute:
    """The recompute set of least added time that fits (`chosen` None if none fits); the
    outputs of `sent` go to the next stage, so they are kept whatever is recomputed."""
    finals, exact = _solutions(graph, stage, budget, max_added_ms, sent)
    if not finals:
        return Recompute(None, math.inf, exact)
    best = min(finals, key=lambda p: (p.added_ms, p.memory, p.chosen))
    return Recompute(best.chosen, best.added_ms, exact, best.kept, best.peak)


def added_lower_bound(
    graph: PlanGraph, stage: Sequence[int], budget: MemoryRoom, kept: float
) -> float:
    """A lower bound on the forward time a stage keeping `kept` bytes per micro-batch without
    recompute must add to fit `budget` (inf: nothing fits). Cheap, so the search can skip most
    stages. Recomputing a node frees at most its own saved bytes and the stage tensors it keeps,
    and segment inputs only add memory back, so a fractional knapsack over those savings never
    exceeds the true cost."""
    if _least_memory(graph, stage, budget) > budget.room:
        return math.inf
    shed = kept - budget.room / budget.in_flight
    members = set(stage)
    items = []
    for n in stage:
        if n in graph.never_recomputed:
            continue
        frees = graph.internal_bytes[n] + sum(
            graph.out_bytes[t] for t in graph.keeps[n] if t in members
        )
        if frees > 0:
            items.append((graph.fwd_ms[n] / frees, graph.fwd_ms[n], frees))
    added = 0.0
    for _, ms, frees in sorted(items):
        if frees >= shed:
            return added + ms * shed / frees
        added, shed = added + ms, shed - frees
    return math.inf


def own_saved_bytes(graph: PlanGraph, n: int) -> int:
    """What node n keeps for backward that no other node keeps for it: its saved bytes, and
    its output if it saves that."""
    return graph.internal_bytes[n] + (graph.out_bytes[n] if n in graph.keeps[n] else 0)


def _least_memory(graph: PlanGraph, stage: Sequence[int], budget: MemoryRoom) -> float:
    """A lower bound on in_flight x kept + peak over every recompute choice: a node left alone
    keeps at least its own saved bytes (and its output, if it saves that); a recomputed node is
    rebuilt in some segment, so the peak is at least its transient. The best choice of that
    relaxed problem recomputes exactly the nodes whose transient is below some threshold."""
    nodes = sorted((graph.transient_bytes(n), own_saved_bytes(graph, n)) for n in stage)
    left_alone = sum(own for _, own in nodes)
    least = budget.in_flight * left_alone
    for transient, own in nodes:
        left_alone -= own
        least = min(least, transient + budget.in_flight * left_alone)
    return least


def _solutions(
    graph: PlanGraph,
    stage: Sequence[int],
    budget: MemoryRoom,
    max_added_ms: float,
    sent: Collection[int],
) -> tuple[list[_Partial], bool]:
    """The Pareto-best complete recompute choices that fit `budget`, and whether that set is
    complete (False when a front had to be thinned)."""
    order = sorted(stage)
    limit = max(MIN_FRONT, SEARCH_WORK // (len(order) * graph.size))
    members = set(order)
    roots = {graph.owner[u] for u in sent} & members  # kept from the moment they are made
    last_use: dict[int, int] = {}
    for position, n in enumerate(order):
        for t in (*graph.reads[n], *graph.keeps[n]):
            if t in members:
                last_use[t] = position
    # state: ((tensor, kept, producer in the open segment), ...) for tensors still to be read
    states: dict[tuple, list[_Partial]] = {(): [_Partial(0.0, 0, 0.0, 0, 0, ())]}
    exact = True
    for position, n in enumerate(order):
        following: dict[tuple, list[_Partial]] = {}
        for live, partials in states.items():
            for recompute in (False,) if n in graph.never_recomputed else (False, True):
                live_tensors = dict((t, (k, o)) for t, k, o in live)
                step = _step(graph, n, recompute, live_tensors, members, roots)
                tensors, extra_kept, extra_ms = step
                key = tuple(
                    sorted(
                        (t, k, o) for t, (k, o) in tensors.items() if last_use.get(t, -1) > position
                    )
                )
                for partial in partials:
                    moved = _advance(graph, budget, partial, n, recompute, extra_kept, extra_ms)
                    if moved.added_ms > max_added_ms or moved.memory > budget.room:
                        continue
                    _insert(following.setdefault(key, []), moved)
        for key, front in following.items():
            if len(front) > limit:
                following[key] = _thin(front, limit)
                exact = False
        states = following
    return [p for partials in states.values() for p in partials], exact


def _step(
    graph: PlanGraph,
    n: int,
    recompute: bool,
    tensors: dict[int, tuple[bool, bool]],
    members: set[int],
    roots: set[int],
) -> tuple[dict[int, tuple[bool, bool]], int, float]:
    """Apply node n's decision to the live tensors: (tensors, newly kept bytes, added ms)."""
    newly_kept = 0
    if n in roots:  # sent on: kept whatever is recomputed
        tensors[n] = (True, False)
        newly_kept += graph.out_bytes[n]
    if recompute:
        for t in graph.reads[n]:
            if t in members and t in tensors and not any(tensors[t]):
                tensors[t] = (True, False)  # a segment input: checkpoint keeps it
                newly_kept += graph.out_bytes[t]
        if graph.owner[n] == n and n not in roots:
            tensors[n] = (False, True)
        return tensors, newly_kept, graph.fwd_ms[n]
    if graph.owner[n] == n and n not in roots:
        tensors[n] = (False, False)
    for t in graph.keeps[n]:
        if t in members and t in tensors and not tensors[t][0]:
            tensors[t] = (True, False)
            newly_kept += graph.out_bytes[t]
    # the run of recomputed nodes ends here: no tensor's producer is in an open segment now
    tensors = {t: (kept, False) for t, (kept, _) in tensors.items()}
    return tensors, newly_kept + graph.internal_bytes[n], 0.0


def _advance(
    graph: PlanGraph,
    budget: MemoryRoom,
    partial: _Partial,
    n: int,
    recompute: bool,
    extra_kept: int,
    extra_ms: float,
) -> _Partial:
    kept = partial.kept + extra_kept
    if not recompute:
        memory = budget.in_flight * kept + partial.peak
        return _Partial(partial.added_ms, kept, memory, 0, partial.peak, partial.chosen)
    current = partial.current + graph.transient_bytes(n)
    peak = max(partial.peak, current)
    memory = budget.in_flight * kept + peak
    return _Partial(partial.added_ms + extra_ms, kept, memory, current, peak, (*partial.chosen, n))


def _insert(front: list[_Partial], candidate: _Partial) -> None:
    """Keep `front` a Pareto set over (added time, kept, memory, current): drop the candidate if
    another point is no worse in all four, else drop what it is no worse than.

    Comparing memory rather than peak is still safe: what later nodes add to kept is the same
    for both points, and a larger open segment can only raise the peak, so a point with no more
    kept, no larger open segment and no more memory now ends with no more memory. (The hot
    loop of the planner: fields are unpacked once and compared as plain numbers.)"""
    added, kept, memory, current = candidate[:4]
    beaten = False
    for p in front:
        if p[0] <= added and p[1] <= kept and p[2] <= memory and p[3] <= current:
            return
        beaten = beaten or (added <= p[0] and kept <= p[1] and memory <= p[2] and current <= p[3])
    if beaten:
        front[:] = [
            p
            for p in front
            if not (added <= p[0] and kept <= p[1] and memory <= p[2] and current <= p[3])
        ]
    front.append(candidate)


def _thin(front: list[_Partial], limit: int) -> list[_Partial]:
    """Keep the fastest half and the leanest half of an oversized front (exactness is lost)."""
    fastest = sorted(front, key=lambda p: (p.added_ms, p.memory))[: limit // 2]
    leanest = sorted(front, key=lambda p: (p.memory, p.added_ms))
    kept = {id(p): p for p in fastest}
    for p in leanest:
        if len(kept) >= limit:
            break
        kept.setdefault(id(p), p)
    return list(kept.values())
