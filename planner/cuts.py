"""The cut points of a DAG: its ideals (down-closed node sets), as integer bitmasks.

A pipeline split is a chain of ideals, empty set to all nodes; every stage is the difference of
two consecutive ones, so every edge runs from an earlier stage to a later one. Chains have N + 1
ideals; branchy graphs have many more (PipeDream enumerates the same family as antichains).
When there are more than `limit`, the planner falls back to the prefixes of a few topological
orders and says that optimality is not proven.
"""

from __future__ import annotations

from collections.abc import Sequence

from vpipe.planner.graph import PlanGraph


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
    """Every ideal, sorted by size then value, or None if there are more than `limit`."""
    pred_masks = [bits(p) for p in graph.preds]
    seen = {0}
    frontier = [0]
    while frontier:
        grown = []
        for ideal in frontier:
            for n in range(graph.size):
                if not ideal >> n & 1 and pred_masks[n] & ~ideal == 0:
                    bigger = ideal | 1 << n
                    if bigger not in seen:
                        seen.add(bigger)
                        grown.append(bigger)
            if len(seen) > limit:
                return None
        frontier = grown
    return sorted(seen, key=lambda m: (m.bit_count(), m))


def prefix_ideals(graph: PlanGraph) -> list[int]:
    """Prefixes of the profile's order and of a depth-first order: a small family of cuts."""
    orders = [list(range(graph.size)), _depth_first_order(graph)]
    seen: set[int] = set()
    for order in orders:
        mask = 0
        seen.add(0)
        for n in order:
            mask |= 1 << n
            seen.add(mask)
    return sorted(seen, key=lambda m: (m.bit_count(), m))


def _depth_first_order(graph: PlanGraph) -> list[int]:
    """A topological order that finishes one branch before starting the next."""
    waiting = [len(p) for p in graph.preds]
    ready = [n for n in range(graph.size) if waiting[n] == 0][::-1]
    order = []
    while ready:
        n = ready.pop()
        order.append(n)
        for s in sorted(graph.succs[n], reverse=True):
            waiting[s] -= 1
            if waiting[s] == 0:
                ready.append(s)
    return order
