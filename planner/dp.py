"""Exact dynamic program over the DAG's cuts, with per-stage recompute solved inside it.

best[k][I] is the smallest bottleneck time of placing ideal I on stages 0..k; a transition adds
stage k = I \\ J for an ideal J inside I. Everything that adds up over nodes (compute, bytes) is a
difference of per-ideal sums, and the tensors a stage keeps come from one matrix product, so
all pairs (J, I) are costed at once with numpy. A stage that does not fit without recompute
asks `recompute.cheapest_recompute`, but only when it could still beat the best value known for
I — recompute only ever adds time, so the rest cannot matter.
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
        self.member = member
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
    best, choice = _run(graph, settings, tables)
    split = _reconstruct(graph, settings, tables, best, choice)
    bound = max(tables.compute[-1] / settings.gpus, max(map(graph.compute_ms, range(graph.size))))
    bound *= schedule_shape(settings, 0).batch_fraction
    exact = cuts == "all"
    return Split(
        solver="dp",
        feasible=split is not None,
        stages=split[0] if split else (),
        recompute=split[1] if split else (),
        bottleneck_ms=split[2] if split else math.inf,
        optimal=exact and split is not None,
        lower_bound_ms=split[2] if exact and split else bound,
        seconds=time.perf_counter() - start,
        cuts=cuts,
    )


def _run(graph: PlanGraph, settings: PlanSettings, tables: _Tables):
    per_byte = 2 / (settings.bandwidth_gbps * 1e6)
    count = len(tables.ideals)
    best = np.full((settings.gpus, count), math.inf)
    choice: dict[tuple[int, int], tuple[int, tuple[int, ...]]] = {}
    for k in range(settings.gpus):
        shape = schedule_shape(settings, k)
        scale = shape.batch_fraction
        comm_in = tables.crossing * per_byte * scale  # indexed by J
        comm_out = tables.crossing * per_byte * scale  # indexed by I
        compute = (tables.compute[None, :] - tables.compute[:, None]) * scale
        stage_time = np.maximum(compute, np.maximum(comm_in[:, None], comm_out[None, :]))
        trainable = tables.trainable[None, :] - tables.trainable[:, None]
        weights = (
            tables.params[None, :]
            - tables.params[:, None]
            + trainable * (shape.versions + graph.optimizer_factor)
        )
        received = shape.in_flight * scale * tables.crossing[:, None]
        memory = weights + received + shape.in_flight * scale * tables.kept
        previous = np.zeros(count) if k == 0 else best[k - 1]
        if k == 0:
            previous = np.where(np.arange(count) == 0, 0.0, math.inf)
        value = np.maximum(previous[:, None], stage_time)
        allowed = tables.inside & np.isfinite(value)
        fits = allowed & (memory <= settings.memory_bytes)
        for i in range(1, count):
            column = np.where(fits[:, i], value[:, i], math.inf)
            j = int(np.argmin(column))
            if np.isfinite(column[j]):
                best[k, i] = column[j]
                choice[k, i] = (j, ())
            # stages that need recompute, cheapest-looking first, while they can still win
            needy = np.flatnonzero(allowed[:, i] & ~fits[:, i])
            for j in needy[np.argsort(value[needy, i], kind="stable")]:
                if value[j, i] >= best[k, i]:
                    break
                room = MemoryRoom(
                    room=settings.memory_bytes - weights[j, i] - received[j, 0],
                    act=shape.in_flight * scale,
                    trans=scale,
                )
                slack = (best[k, i] - compute[j, i]) / scale
                stage = members(tables.ideals[i] & ~tables.ideals[j])
                found = cheapest_recompute(graph, stage, room, max_added_ms=slack)
                if found is None:
                    continue
                chosen, added = found
                candidate = max(previous[j], compute[j, i] + added * scale, comm_in[j], comm_out[i])
                if candidate < best[k, i]:
                    best[k, i] = candidate
                    choice[k, i] = (int(j), chosen)
    return best, choice


def _reconstruct(graph, settings, tables, best, choice):
    last = len(tables.ideals) - 1
    if not np.isfinite(best[settings.gpus - 1, last]):
        return None
    stages, recompute = [], []
    i = last
    for k in range(settings.gpus - 1, -1, -1):
        j, chosen = choice[k, i]
        stages.append(tuple(members(tables.ideals[i] & ~tables.ideals[j])))
        recompute.append(tuple(chosen))
        i = j
    return tuple(reversed(stages)), tuple(reversed(recompute)), float(best[-1, last])
