"""The fewest bytes a cut must carry: a lower bound on the slowest stage when links are slow.

A cut is an ideal (down-closed unit set); the bytes it carries are those of the nodes inside it
read outside it, or model outputs (read by the loss on the last stage), as `costmodel`'s
`crossing_bytes` counts them. The cheapest ideal between two given ones (the units that must be
inside, those that may be) is a minimum s-t cut on a closure network (Picard 1976); its linear
program, solved by HiGHS, has the same value:

    minimise   sum_u bytes_u c_u
    subject to x_v <= x_p            for every edge p -> v   (the ideal is down-closed)
               c_u >= x_u - x_w      for every reader w of u (u inside, w not: u's bytes cross)
               c_u >= x_u            for a model output u
               x = 1 on the units that must be inside, 0 on those that may not
               0 <= x, c <= 1

(and whatever its optimum, its value never exceeds the cheapest ideal's bytes, so it is a lower
bound either way). With windows (`planner/windows.py`) each of a split's S - 1 cuts lies between
such bounds, so a stage next to a cut has a transfer at least the cheapest cut there takes.
"""

from __future__ import annotations

import itertools

import numpy as np

from vpipe.planner.graph import PlanGraph
from vpipe.planner.highs import silent_highs
from vpipe.planner.precedence import Units

MAX_PINS = 16  # (first unit, last unit) pairs tried when neither bound pins the cut


class CrossingBound:
    """The linear program for one graph, built once; each query only moves the pins (HiGHS
    starts from the previous query's basis)."""

    def __init__(self, graph: PlanGraph, units: Units) -> None:
        self.graph, self.units = graph, units
        self.unit_of = np.zeros(graph.size, dtype=np.int64)
        for k, members in enumerate(units.members):
            self.unit_of[list(members)] = k
        outputs = set(graph.outputs)
        crossers = [
            u for u in range(graph.size) if graph.out_bytes[u] and (graph.succs[u] or u in outputs)
        ]
        count = graph.size + len(crossers)
        self.solver = silent_highs()
        self.solver.addVars(count, np.zeros(count), np.ones(count))
        cost = np.zeros(count)
        cost[graph.size :] = [graph.out_bytes[u] for u in crossers]
        self.solver.changeColsCost(count, np.arange(count, dtype=np.int32), cost)
        rows: list[tuple[list[int], list[float]]] = []  # each row: sum of values x columns >= 0
        for v in range(graph.size):
            rows.extend(([p, v], [1.0, -1.0]) for p in graph.preds[v])  # x_p >= x_v
        for members in units.members:  # a group is inside or outside whole
            rows.extend(([a, b], [1.0, -1.0]) for a, b in itertools.pairwise(members))
            rows.extend(([b, a], [1.0, -1.0]) for a, b in itertools.pairwise(members))
        for k, u in enumerate(crossers):
            c = graph.size + k  # c_u >= x_u - x_w
            rows.extend(([c, u, w], [1.0, -1.0, 1.0]) for w in graph.succs[u])
            if u in outputs:
                rows.append(([c, u], [1.0, -1.0]))
        lengths = [len(columns) for columns, _ in rows]
        self.solver.addRows(
            len(rows),
            np.zeros(len(rows)),
            np.full(len(rows), np.inf),
            sum(lengths),
            np.concatenate([[0], np.cumsum(lengths[:-1])]).astype(np.int32),
            np.array([c for columns, _ in rows for c in columns], dtype=np.int32),
            np.array([v for _, values in rows for v in values]),
        )

    def least_bytes(self, inside: np.ndarray, allowed: np.ndarray) -> float:
        """The fewest bytes an ideal carries that holds the units `inside` (down-closed) and
        only units `allowed`, and is neither empty nor whole: when `inside` is empty, some
        first unit is pinned inside, and when every unit is allowed, some last unit outside
        (0 when there are too many such pairs)."""
        units = self.units
        firsts = [u for u in range(units.size) if not units.preds[u] and allowed[u]]
        lasts = [u for u in range(units.size) if not units.succs[u] and not inside[u]]
        pin_in: list[int | None] = [None] if inside.any() else list(firsts)
        pin_out: list[int | None] = [None] if not allowed.all() else list(lasts)
        if len(pin_in) * len(pin_out) > MAX_PINS:
            return 0.0
        least = np.inf
        for first, last in itertools.product(pin_in, pin_out):
            if first is not None and first == last:
                continue
            low, high = inside.copy(), allowed.copy()
            if first is not None:
                low[first] = True
            if last is not None:
                high[last] = False
            least = min(least, self._solve(low, high))
        return float(least) if np.isfinite(least) else 0.0

    def _solve(self, inside: np.ndarray, allowed: np.ndarray) -> float:
        size = self.graph.size
        self.solver.changeColsBounds(
            size,
            np.arange(size, dtype=np.int32),
            inside[self.unit_of].astype(np.float64),
            allowed[self.unit_of].astype(np.float64),
        )
        self.solver.run()
        return float(self.solver.getInfo().objective_function_value)
