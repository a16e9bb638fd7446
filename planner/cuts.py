"""The cut points of a DAG: its ideals (down-closed node sets), as integer bitmasks.

A pipeline split is a chain of ideals, empty set to all nodes; every stage is the difference of
two consecutive ones, so every edge runs from an earlier stage to a later one. Chains have N + 1
ideals; branchy graphs have many more (PipeDream enumerates the same family as antichains).
When there are more than `limit`, the planner falls back to the prefixes of a few topological
orders and says that optimality is not proven.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from vpipe.planner.graph import PlanGraph

RESTRICTED = "prefixes of two topological orders (too many cuts to enumerate)"


def bits(nodes: Sequence[int]) -> int:
    mask = 0
    for n in nodes:
        mask |= 1 << n
    return mask


def members(mask: int) -> list[int]:
    """Node indices in a bitmask, ascending (the profile's topological order)."""
    out = []
    while mask:
        low = mask & -mask
        out.append(low.bit_length() - 1)
        mask ^= low
    return out


def all_ideals(graph: PlanGraph, limit: int) -> list[int] | None:
    """Every ideal worth considering, sorted by size then value, or None past `limit`.

    Free nodes (no time, no bytes, kept by nobody) that can only hurt by moving are glued in
    place: a dangling sink to its one producer (elsewhere, its input would cross cuts for
    nothing) and a source of zero bytes to the first stage. This keeps graphs like GNMT, whose
    unused outputs float free, from multiplying their cuts.
    """
    sinks, sources = _glued(graph)
    grouped = {n for group in graph.together for n in group}
    free = {*sinks, *sources} - grouped
    sinks = {n: p for n, p in sinks.items() if n in free}
    sources = [n for n in sources if n in free]
    source_mask = bits(sources)
    # the units an ideal grows by: single nodes, and groups that must share a stage
    units = [bits(group) for group in graph.together]
    units += [1 << n for n in range(graph.size) if n not in free and n not in grouped]
    unit_preds = [
        bits([p for n in members(unit) for p in graph.preds[n]]) & ~unit & ~source_mask
        for unit in units
    ]
    seen = {0}
    frontier = [0]
    while frontier:
        grown = []
        for ideal in frontier:
            for unit, preds in zip(units, unit_preds, strict=True):
                if not ideal & unit and preds & ~ideal == 0:
                    bigger = ideal | unit
                    if bigger not in seen:
                        seen.add(bigger)
                        grown.append(bigger)
            if len(seen) > limit:
                return None
        frontier = grown
    full = [_with_glued(m, sinks, source_mask) for m in seen]
    return sorted(full, key=lambda m: (m.bit_count(), m))


def _glued(graph: PlanGraph) -> tuple[dict[int, int], list[int]]:
    """(dangling sink -> its producer, zero-byte sources) among the free nodes."""
    outputs = set(graph.outputs)
    sinks: dict[int, int] = {}
    sources: list[int] = []
    for n in range(graph.size):
        free = (
            graph.compute_ms(n) == 0
            and graph.link_ms[n] == 0  # an empty tensor still costs a message per cut
            and graph.param_bytes[n] == 0
            and graph.internal_bytes[n] == 0
            and not graph.keeps[n]
            and not graph.holders[n]
            and n not in outputs
            and not any(n in tie.users for tie in graph.ties)  # where it runs decides a copy
        )
        if not free:
            continue
        if not graph.succs[n] and len(graph.preds[n]) == 1:
            sinks[n] = graph.preds[n][0]
        elif not graph.preds[n] and graph.succs[n] and graph.out_bytes[n] == 0:
            sources.append(n)
    return sinks, sources


def _with_glued(mask: int, sinks: dict[int, int], source_mask: int) -> int:
    if mask:
        mask |= source_mask
    for sink, producer in sinks.items():  # ascending: a producer is settled before its sink
        if mask >> producer & 1:
            mask |= 1 << sink
    return mask


def cut_family(graph: PlanGraph, limit: int) -> tuple[list[int], str]:
    """Every ideal (`all_ideals`) when there are at most `limit`, else `prefix_ideals`'s few;
    and how the cuts were restricted, as a plan states it ("all" when they were not)."""
    ideals = all_ideals(graph, limit)
    if ideals is None:
        return prefix_ideals(graph), RESTRICTED
    return ideals, "all"


def prefix_ideals(graph: PlanGraph) -> list[int]:
    """Prefixes of the profile's order and of a depth-first order: a small family of cuts
    (those that keep every `together` group whole)."""
    orders = [list(range(graph.size)), depth_first_order(graph.preds, graph.succs)]
    seen: set[int] = set()
    for order in orders:
        mask = 0
        seen.add(0)
        for n in order:
            mask |= 1 << n
            if not graph.splits_a_group(mask):
                seen.add(mask)
    return sorted(seen, key=lambda m: (m.bit_count(), m))


def depth_first_order(
    preds: Sequence[Collection[int]], succs: Sequence[Collection[int]]
) -> list[int]:
    """A topological order of the DAG given by each vertex's predecessors and successors that
    finishes one branch before starting the next."""
    waiting = [len(p) for p in preds]
    ready = [n for n in range(len(preds)) if waiting[n] == 0][::-1]
    order = []
    while ready:
        n = ready.pop()
        order.append(n)
        for s in sorted(succs[n], reverse=True):
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.append(s)
    return order
