"""Hybrid plans: how many stages, where to cut, and how many data-parallel replicas each stage
gets, for N processes (PipeDream's hybrid parallelism, over every cut of the DAG).

best[c][m][J] is the smallest bottleneck time of running the nodes after ideal J as c stages
on m processes. The first of those stages, I \\ J, gets r of the m processes; it holds
ceil(m / r) micro-batches per replica under asp (common/schedules.replica_in_flight), which is
why the search runs from the last stage back: m is then known. Every term comes from the one
cost model (costmodel.replicated_time_ms, allreduce_ms, stage_memory with `replica_shape`), on
the same per-pair tables as the straight DP. Replicated stages do not recompute yet: a stage
that does not fit in memory as it is is not a candidate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from vpipe.planner.costmodel import (
    RING,
    AllReduce,
    ReplicatedPrediction,
    ScheduleShape,
    StageBytes,
    allreduce_ms,
    allreduce_share_ms,
    evaluate_replicated_stage,
    replica_shape,
    replicated_time_ms,
    stage_memory,
)
from vpipe.planner.cuts import cut_family, members
from vpipe.planner.dp import PairTables, PairTimes
from vpipe.planner.graph import PlanGraph
from vpipe.planner.schema import PlanSettings

IDEAL_LIMIT = 1000  # beyond this many cuts, use a restricted family and say so


@dataclass(frozen=True)
class HybridSplit:
    """The hybrid search's answer, in node indices; `feasible` False: nothing fits memory."""

    feasible: bool
    stages: tuple[tuple[int, ...], ...] = ()
    replicas: tuple[int, ...] = ()
    predicted: tuple[ReplicatedPrediction, ...] = ()
    bottleneck_ms: float = math.inf  # the slowest stage's time per micro-batch
    optimal: bool = False  # over every cut and replica count (without recompute)
    cuts: str = "all"
    seconds: float = 0.0

    @property
    def processes(self) -> int:
        return sum(self.replicas)


def solve_hybrid(
    graph: PlanGraph,
    settings: PlanSettings,
    stages: int | None = None,
    model: AllReduce = RING,
    replicate: bool = True,
) -> HybridSplit:
    """The fastest plan on at most `settings.gpus` processes, with `stages` stages if given;
    without `replicate`, the fastest straight pipeline (one process per stage)."""
    start = time.perf_counter()
    ideals, cuts = cut_family(graph, IDEAL_LIMIT)
    search = _Search(graph, settings, PairTables(graph, ideals), model, replicate)
    counts = [stages] if stages is not None else range(1, settings.gpus + 1)
    best = min(
        ((search.best[c][m][0], c, m) for c in counts for m in range(c, settings.gpus + 1)),
        default=(math.inf, 0, 0),
    )
    if not math.isfinite(best[0]):
        return HybridSplit(feasible=False, optimal=cuts == "all", cuts=cuts)
    steps = search.path(best[1], best[2])
    split = tuple(tuple(members(ideals[i] & ~ideals[j])) for j, i, _ in steps)
    replicas = tuple(r for _, _, r in steps)
    predicted = _predict(graph, settings, split, replicas, model)
    return HybridSplit(
        feasible=True,
        stages=split,
        replicas=replicas,
        predicted=predicted,
        bottleneck_ms=float(best[0]),  # the tables' figure: tests check it is the model's
        optimal=cuts == "all",
        cuts=cuts,
        seconds=time.perf_counter() - start,
    )


def _predict(
    graph: PlanGraph,
    settings: PlanSettings,
    split: tuple[tuple[int, ...], ...],
    replicas: tuple[int, ...],
    model: AllReduce,
) -> tuple[ReplicatedPrediction, ...]:
    """Each chosen stage as the cost model evaluates it (the tables' figures are checked
    against these by tests/planner/test_hybrid.py)."""
    found = []
    before: list[int] = []
    for index, (stage, r) in enumerate(zip(split, replicas, strict=True)):
        position = (index, index == len(split) - 1)
        workers = sum(replicas[index:])
        found.append(
            evaluate_replicated_stage(graph, settings, position, before, stage, r, workers, model)
        )
        before.extend(stage)
    return tuple(found)


class _Search:
    """The tables best[c][m] (per ideal J) and the choices that reach them."""

    def __init__(
        self,
        graph: PlanGraph,
        settings: PlanSettings,
        tables: PairTables,
        model: AllReduce,
        replicate: bool,
    ) -> None:
        n, count = settings.gpus, len(tables.ideals)
        times = PairTimes.of(tables, settings)
        trainable = tables.trainable[None, :] - tables.trainable[:, None] + tables.tied_trainable
        sums = StageBytes(
            params=tables.params[None, :] - tables.params[:, None] + tables.tied_params,
            trainable=trainable,
            kept=tables.kept,
            received=tables.crossing[:, None],
            sent=tables.crossing[None, :],
            copied=tables.copied,
            segment=0.0,
            backward=_backward_peaks(graph, tables, settings),
        )
        last = np.zeros(count, dtype=bool)
        last[-1] = True  # stage I \ J is the last when I is the whole graph
        full = count - 1
        inf = np.full(count, math.inf)
        # best[c][m][J]; choice[c][m][J] = (I, r)
        self.best = [[inf.copy() for _ in range(n + 1)] for _ in range(n + 1)]
        self.choice: dict[tuple[int, int, int], tuple[int, int]] = {}
        self.best[0][0][full] = 0.0
        for m in range(1, n + 1):  # ascending: best[.][m - r] is final when best[.][m] reads it
            for r in range(1, m + 1 if replicate else 2):
                one_ms = allreduce_ms(trainable, r, settings, model, graph.link_ms_per_byte)
                allreduce = allreduce_share_ms(one_ms, r, settings)
                comm_in, comm_out = times.comm[:, None], times.comm[None, :]
                time_r = replicated_time_ms(
                    times.compute, allreduce, comm_in, comm_out, r, np.maximum
                )
                shape = replica_shape(settings, r, m)
                fits = tables.inside & _fits(graph, settings, sums, shape, last, r)
                cost = np.where(fits, time_r, math.inf)
                for c in range(1, m - r + 2):
                    self._extend(c, m, r, cost)

    def _extend(self, c: int, m: int, r: int, cost: np.ndarray) -> None:
        """Try stage I \\ J with r replicas in front of c - 1 stages on m - r processes."""
        count = cost.shape[0]
        if c == 1:  # the last stage: I must be the whole graph
            candidate = np.full_like(cost, math.inf)
            candidate[:, -1] = cost[:, -1]
        else:
            candidate = np.maximum(cost, self.best[c - 1][m - r][None, :])
        at = candidate.argmin(axis=1)
        value = candidate[np.arange(count), at]
        better = value < self.best[c][m]
        self.best[c][m] = np.where(better, value, self.best[c][m])
        for j in np.nonzero(better)[0]:
            self.choice[c, m, int(j)] = (int(at[j]), r)

    def path(self, stages: int, processes: int) -> list[tuple[int, int, int]]:
        """(J, I, r) of each stage, first stage first."""
        steps, j, c, m = [], 0, stages, processes
        while c:
            i, r = self.choice[c, m, j]
            steps.append((j, i, r))
            j, c, m = i, c - 1, m - r
        return steps


def _backward_peaks(graph: PlanGraph, tables: PairTables, settings: PlanSettings) -> np.ndarray:
    """[J, I]: the backward peak of stage I \\ J, exactly (needed only under a memory cap)."""
    if not math.isfinite(settings.memory_bytes):
        return np.zeros((len(tables.ideals), len(tables.ideals)))
    return tables.backward_floor(most=graph.size)


def _fits(
    graph: PlanGraph,
    settings: PlanSettings,
    sums: StageBytes,
    shape: ScheduleShape,
    last: np.ndarray,
    replicas: int,
) -> np.ndarray:
    """[J, I]: whether one of `replicas` of stage I \\ J with `shape` fits its device's memory. The
    links' buffers depend on whether the stage is the first (J empty) or the last (I whole)."""
    if not math.isfinite(settings.memory_bytes):
        return np.ones(sums.kept.shape, dtype=bool)
    count = sums.kept.shape[0]

    def total(index: int, is_last: bool) -> np.ndarray:
        memory = stage_memory(
            settings,
            index,
            graph.optimizer_factor,
            sums,
            np.maximum,
            shape=shape,
            last=is_last,
            replicas=replicas,
        )
        return np.broadcast_to(np.asarray(memory.total, dtype=np.float64), (count, count))

    memory = total(1, False).copy()
    memory[:, last] = total(1, True)[:, last]
    memory[0, :] = total(0, False)[0, :]
    memory[0, last] = total(0, True)[0, last]
    return memory <= settings.memory_bytes
