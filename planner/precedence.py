"""The DAG as the exact planner sees it: units that share a stage, their work, who precedes whom.

A *unit* is a node, or a group of nodes that must share a stage (`PlanGraph.together`) merged
into one: the groups are convex, so the units still form a DAG. Units are numbered in a
topological order. The closure (every unit's ancestors and descendants) is kept as boolean
matrices, because the bounds in `planner/windows.py` sum work over such sets for every unit.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from vpipe.planner.graph import PlanGraph


@dataclass(frozen=True, eq=False)
class Units:
    """Units of a plan graph, in topological order, with their work and closure."""

    members: tuple[tuple[int, ...], ...]  # the graph's nodes in each unit, ascending
    preds: tuple[tuple[int, ...], ...]
    succs: tuple[tuple[int, ...], ...]
    work: np.ndarray  # float64: forward + backward ms of the unit's nodes (graph.compute_ms)
    ancestors: np.ndarray  # bool [v, u]: u is v or precedes it
    descendants: np.ndarray  # bool [v, u]: u is v or follows it

    @property
    def size(self) -> int:
        return len(self.members)

    def nodes(self, units: list[int]) -> tuple[int, ...]:
        """The graph's nodes of these units, ascending (the profile's order)."""
        return tuple(sorted(n for u in units for n in self.members[u]))


def units_of(graph: PlanGraph) -> Units:
    """Merge each `together` group into one unit and order the units topologically."""
    unit_of = list(range(graph.size))
    for group in graph.together:
        for n in group:
            unit_of[n] = group[0]
    heads = sorted(set(unit_of))
    edges = {
        (unit_of[u], unit_of[v])
        for u in range(graph.size)
        for v in graph.succs[u]
        if unit_of[u] != unit_of[v]
    }
    order = _topological(heads, edges)
    index = {head: k for k, head in enumerate(order)}
    members: list[list[int]] = [[] for _ in order]
    for n in range(graph.size):
        members[index[unit_of[n]]].append(n)
    preds: list[set[int]] = [set() for _ in order]
    succs: list[set[int]] = [set() for _ in order]
    for a, b in edges:
        succs[index[a]].add(index[b])
        preds[index[b]].add(index[a])
    work = np.array([sum(graph.compute_ms(n) for n in group) for group in members])
    pred_tuples = tuple(tuple(sorted(p)) for p in preds)
    succ_tuples = tuple(tuple(sorted(s)) for s in succs)
    return Units(
        members=tuple(tuple(m) for m in members),
        preds=pred_tuples,
        succs=succ_tuples,
        work=work,
        ancestors=_closure(pred_tuples, range(len(order))),
        descendants=_closure(succ_tuples, range(len(order) - 1, -1, -1)),
    )


def _topological(heads: list[int], edges: set[tuple[int, int]]) -> list[int]:
    """Kahn's algorithm, smallest node first: the profile's order wherever it is one."""
    waiting = {h: 0 for h in heads}
    after: dict[int, list[int]] = {h: [] for h in heads}
    for a, b in edges:
        waiting[b] += 1
        after[a].append(b)
    ready = [h for h in heads if waiting[h] == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        head = heapq.heappop(ready)
        order.append(head)
        for b in after[head]:
            waiting[b] -= 1
            if waiting[b] == 0:
                heapq.heappush(ready, b)
    return order


def _closure(neighbours: tuple[tuple[int, ...], ...], order: range) -> np.ndarray:
    """[v, u]: u reaches v through `neighbours` (or is v), built as integer bitsets in `order`
    (each unit after the neighbours it reads), then unpacked into a boolean matrix."""
    size = len(neighbours)
    reach = [0] * size
    for v in order:
        mask = 1 << v
        for u in neighbours[v]:
            mask |= reach[u]
        reach[v] = mask
    width = (size + 7) // 8
    raw = np.frombuffer(b"".join(m.to_bytes(width, "little") for m in reach), dtype=np.uint8)
    bits = np.unpackbits(raw.reshape(size, width), axis=1, bitorder="little")
    return bits[:, :size].astype(bool)
