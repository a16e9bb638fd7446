"""Exact search over the DAG's cuts, with per-stage recompute solved inside it.

best[k][I] is the smallest bottleneck time of placing ideal I on stages 0..k; a transition adds
stage k = I \\ J for an ideal J inside I. Everything that adds up over nodes (compute, bytes) is a
difference of per-ideal sums, and the tensors a stage keeps come from one matrix product, so
all pairs (J, I) are costed at once with numpy. A stage that does not fit without recompute
first counts at its time without recompute (a lower bound); only when the best chain uses it
does `recompute.cheapest_recompute` cost it for real, and the chain is searched again.
"""

from __future__ import annotations

import math
import time

import numpy as np

from vpipe.planner.costmodel import schedule_shape
from vpipe.planner.cuts import all_ideals, members, prefix_ideals
from vpipe.planner.graph import PlanGraph
from vpipe.planner.recompute import MemoryRoom, cheapest_recompute
from vpipe.planner.schema import PlanSettings
from vpipe.planner.split import Split

IDEAL_LIMIT = 3000  # beyond this many cuts, use a restricted family and say so


class _Tables:
    """Per-ideal sums and per-pair costs, shared by every stage index."""

    def __init__(self, graph: PlanGraph, ideals: list[int]) -> None:
        n = graph.size
        self.ideals = ideals
        member = np.array([[m >> i & 1 for i in range(n)] for m in ideals], dtype=np.float64)
        self.compute = member @ np.array([graph.compute_ms(i) for i in range(n)])
        self.params = member @ np.array(graph.param_bytes, dtype=np.float64)
        self.trainable = member @ np.array(graph.trainable_bytes, dtype=np.float64)
        internal = member @ np.array(graph.internal_bytes, dtype=np.float64)
        out = np.array(graph.out_bytes, dtype=np.float64)
        # held[I, t]: tensor t is produced in I and some holder of it is in I too
        held = np.zeros_like(member)
        for t in range(n):
            if graph.holders[t]:
                held[:, t] = member[:, t] * member[:, list(graph.holders[t])].max(axis=1)
        # a holder of t is a descendant of t, so for J inside I the stage I \ J keeps t iff
        # held[I, t] and t is not in J
        kept = (
            internal[None, :] - internal[:, None] + (held @ out)[None, :] - (member * out) @ held.T
        )
        self.kept = kept  # [J, I]: bytes stage I \ J keeps per micro-batch, recompute off
        # crossing[I]: bytes produced in I and needed outside it (the outputs by the loss)
        successor = np.zeros((n, n))
        for u in range(n):
            successor[list(graph.succs[u]), u] = 1
        successor[:, list(graph.outputs)] = 1  # a model output is needed by everything after it
        needed_later = member * (((1 - member) @ successor) > 0)
        self.crossing = needed_later @ out
        self.crossing[-1] = 0.0  # the full set sends nothing
        outside = 1 - member
        self.inside = (member @ outside.T) == 0  # [J, I]: J is a subset of I
        np.fill_diagonal(self.inside, False)


def solve_dp(graph: PlanGraph, settings: PlanSettings) -> Split:
    start = time.perf_counter()
    ideals = all_ideals(graph, IDEAL_LIMIT)
    cuts = "all"
    if ideals is None:
        ideals = prefix_ideals(graph)
        cuts = "prefixes of two topological orders (too many cuts to enumerate)"
    tables = _Tables(graph, ideals)
    best, path, recomputed, searched_fully, chain_bound = _run(graph, settings, tables)
    split = _reconstruct(tables, best, path, recomputed)
    bound = float(
        max(tables.compute[-1] / settings.gpus, max(map(graph.compute_ms, range(graph.size))))
    )
    bound *= schedule_shape(settings, 0).batch_fraction
    if cuts == "all":
        bound = max(bound, chain_bound)
    exact = cuts == "all" and (searched_fully or (split is not None and split[2] <= bound))
    return Split(
        solver="dp",
        feasible=split is not None,
        stages=split[0] if split else (),
        recompute=split[1] if split else (),
        bottleneck_ms=split[2] if split else math.inf,
        optimal=exact,  # for an infeasible answer: proven that nothing fits
        lower_bound_ms=split[2] if exact and split else min(bound, split[2] if split else bound),
        seconds=time.perf_counter() - start,
        cuts=cuts,
    )


def _run(graph: PlanGraph, settings: PlanSettings, tables: _Tables):
    """Lazy exact search: a stage that needs recompute first counts at its time without
    recompute (a lower bound: recompute only adds time); whenever the best chain uses such a
    stage, its true cost is computed and the chain is searched again. When the best chain uses
    only true costs, it is optimal."""
    per_byte = 2 / (settings.bandwidth_gbps * 1e6)
    count = len(tables.ideals)
    costs, needy, rooms = [], [], []
    for k in range(settings.gpus):
        shape = schedule_shape(settings, k)
        scale = shape.batch_fraction
        comm = tables.crossing * per_byte * scale
        compute = (tables.compute[None, :] - tables.compute[:, None]) * scale
        stage_time = np.maximum(compute, np.maximum(comm[:, None], comm[None, :]))
        trainable = tables.trainable[None, :] - tables.trainable[:, None]
        weights = (
            tables.params[None, :]
            - tables.params[:, None]
            + trainable * (shape.versions + graph.optimizer_factor)
            + shape.in_flight * scale * tables.crossing[:, None]
        )
        memory = weights + shape.in_flight * scale * tables.kept
        costs.append(np.where(tables.inside, stage_time, math.inf))
        needy.append(tables.inside & (memory > settings.memory_bytes))
        rooms.append((settings.memory_bytes - weights, compute, shape, comm))
    recomputed: dict[tuple[int, int, int], tuple[int, ...]] = {}
    exact = True  # every recompute search was complete
    bound = None  # the first search, recompute free everywhere, bounds the optimum from below
    while True:
        best, arg = _chain(costs, count)
        bound = float(best[-1, -1]) if bound is None else bound
        path = _path(arg, settings.gpus, count) if np.isfinite(best[-1, -1]) else []
        todo = [(k, j, i) for k, j, i in path if needy[k][j, i] and (k, j, i) not in recomputed]
        if not todo:
            break
        for k, j, i in todo:
            room, compute, shape, comm = rooms[k]
            scale = shape.batch_fraction
            budget = MemoryRoom(room=room[j, i], act=shape.in_flight * scale, trans=scale)
            found = cheapest_recompute(graph, members(tables.ideals[i] & ~tables.ideals[j]), budget)
            exact &= found.exact
            if found.chosen is None:
                costs[k][j, i] = math.inf
                recomputed[k, j, i] = ()
                continue
            recomputed[k, j, i] = found.chosen
            costs[k][j, i] = max(compute[j, i] + found.added_ms * scale, comm[j], comm[i])
    return best, path, recomputed, exact, bound


def _chain(costs: list[np.ndarray], count: int) -> tuple[np.ndarray, np.ndarray]:
    """Min-max over chains of ideals: best[k, I] and the J it came from."""
    best = np.full((len(costs), count), math.inf)
    arg = np.zeros((len(costs), count), dtype=np.int64)
    previous = np.where(np.arange(count) == 0, 0.0, math.inf)
    for k, cost in enumerate(costs):
        value = np.maximum(previous[:, None], cost)
        arg[k] = np.argmin(value, axis=0)
        best[k] = value[arg[k], np.arange(count)]
        previous = best[k]
    return best, arg


def _path(arg: np.ndarray, stages: int, count: int) -> list[tuple[int, int, int]]:
    """The (stage, J, I) transitions of the best chain ending at the full set."""
    path = []
    i = count - 1
    for k in range(stages - 1, -1, -1):
        j = int(arg[k, i])
        path.append((k, j, i))
        i = j
    return path[::-1]


def _reconstruct(tables, best, path, recomputed):
    if not path:
        return None
    stages = tuple(tuple(members(tables.ideals[i] & ~tables.ideals[j])) for _, j, i in path)
    recompute = tuple(recomputed.get(step, ()) for step in path)
    return stages, recompute, float(best[-1, -1])
