"""Hybrid plans: how many stages, where to cut, and how many data-parallel replicas each stage
gets, for N processes (PipeDream's hybrid parallelism, over every cut of the DAG), with each
stage's recompute chosen under the memory cap.

best[c][m][J] is the smallest bottleneck time of running the nodes after ideal J as c stages
on m processes. The first of those stages, I \\ J, gets r of the m processes; it holds
ceil(m / r) micro-batches per replica under asp (common/schedules.replica_in_flight), which is
why the search runs from the last stage back: m is then known. Every term comes from the one
cost model (costmodel.replicated_time_ms, allreduce_ms, stage_memory with `replica_shape`), on
the same per-pair tables as the straight DP.

Recompute is costed lazily, as the straight DP does: a stage that does not fit as it is counts
at its time without recompute (a lower bound: recompute only adds time) unless no recompute
can fit it; whenever the best chain uses such a stage, its cheapest recompute
(`recompute.cheapest_recompute`) sets its true time and the chain is searched again. When the
best chain's stages all have their true times, it is optimal.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

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
    evaluate_stage,
    replica_shape,
    replicated_time_ms,
    sent_nodes,
    stage_bytes,
    stage_memory,
)
from vpipe.planner.cuts import cut_family, members
from vpipe.planner.dp import PairTables, PairTimes
from vpipe.planner.graph import PlanGraph
from vpipe.planner.recompute import MemoryRoom, added_lower_bound, cheapest_recompute
from vpipe.planner.schema import PlanSettings

IDEAL_LIMIT = 1000  # beyond this many cuts, use a restricted family and say so

Pair = tuple[int, int, int, int]  # (processes from the stage on m, its replicas r, J, I)


@dataclass(frozen=True)
class HybridSplit:
    """The hybrid search's answer, in node indices; `feasible` False: nothing fits memory."""

    feasible: bool
    stages: tuple[tuple[int, ...], ...] = ()
    replicas: tuple[int, ...] = ()
    recompute: tuple[tuple[int, ...], ...] = ()
    predicted: tuple[ReplicatedPrediction, ...] = ()
    bottleneck_ms: float = math.inf  # the slowest stage's time per micro-batch
    optimal: bool = False  # over every cut, replica count and recompute choice
    lower_bound_ms: float = 0.0  # on the bottleneck over these cuts; equals it when optimal
    cuts: str = "all"
    seconds: float = 0.0

    @property
    def processes(self) -> int:
        return sum(self.replicas)


@dataclass(frozen=True)
class _Step:
    """One stage of a chain the search found."""

    pair: Pair

    @property
    def replicas(self) -> int:
        return self.pair[1]


@dataclass(frozen=True)
class Cuts:
    """The stages a search may choose from (the graph's ideals, `cuts`: "all" or how they were
    thinned) and their tables: the same for every search over one graph."""

    ideals: list[int]
    cuts: str
    tables: PairTables

    @classmethod
    def of(cls, graph: PlanGraph) -> Cuts:
        ideals, cuts = cut_family(graph, IDEAL_LIMIT)
        return cls(ideals, cuts, PairTables(graph, ideals))


def solve_hybrid(
    graph: PlanGraph,
    settings: PlanSettings,
    stages: int | None = None,
    model: AllReduce = RING,
    replicate: bool = True,
    family: Cuts | None = None,
) -> HybridSplit:
    """The fastest plan on at most `settings.gpus` processes, with `stages` stages if given;
    without `replicate`, the fastest straight pipeline (one process per stage). `family`:
    the graph's `Cuts`, where another search made them already."""
    start = time.perf_counter()
    family = family or Cuts.of(graph)
    ideals, cuts, tables = family.ideals, family.cuts, family.tables
    search = _Search(graph, settings, tables, model, replicate, any_count=stages is None)
    counts = [stages] if stages is not None else [ANY]
    floor = None  # the first search's bottleneck: every needy stage at its lower bound
    upper = math.inf  # the best chain costed for real so far: a plan
    while True:
        search.run()
        best = min(
            ((search.best[c][m][0], c, m) for c in counts for m in range(c, settings.gpus + 1)),
            default=(math.inf, 0, 0),
        )
        floor = best[0] if floor is None else floor
        if not math.isfinite(best[0]):
            return HybridSplit(feasible=False, optimal=cuts == "all" and search.proven, cuts=cuts)
        steps = search.path(best[1], best[2])
        todo = [step.pair for step in steps if not search.settled(step.pair)]
        if not todo:
            break
        for pair in todo:
            search.settle(pair, upper)
        if all(search.settled(step.pair) for step in steps):
            upper = min(upper, max(search.true_cost(step.pair) for step in steps))
    split = tuple(tuple(members(ideals[i] & ~ideals[j])) for _, _, j, i in (s.pair for s in steps))
    replicas = tuple(step.replicas for step in steps)
    recompute = tuple(search.chosen(step.pair) for step in steps)
    return HybridSplit(
        feasible=True,
        stages=split,
        replicas=replicas,
        recompute=recompute,
        predicted=_predict(graph, settings, split, replicas, recompute, model),
        bottleneck_ms=float(best[0]),  # the tables' figure: tests check it is the model's
        optimal=cuts == "all" and search.proven,
        lower_bound_ms=float(best[0] if search.proven else floor),
        cuts=cuts,
        seconds=time.perf_counter() - start,
    )


def _predict(
    graph: PlanGraph,
    settings: PlanSettings,
    split: tuple[tuple[int, ...], ...],
    replicas: tuple[int, ...],
    recompute: tuple[tuple[int, ...], ...],
    model: AllReduce,
) -> tuple[ReplicatedPrediction, ...]:
    """Each chosen stage as the cost model evaluates it (the tables' figures are checked
    against these by tests/planner/test_hybrid.py)."""
    found = []
    before: list[int] = []
    for index, (stage, r, chosen) in enumerate(zip(split, replicas, recompute, strict=True)):
        position = (index, index == len(split) - 1)
        workers = sum(replicas[index:])
        found.append(
            evaluate_replicated_stage(
                graph, settings, position, before, stage, r, workers, model, chosen
            )
        )
        before.extend(stage)
    return tuple(found)


ANY = 1  # with `any_count`, best[ANY][m]: chains of any number of stages


class _Search:
    """The tables best[c][m] (per ideal J: the fastest chain of c stages on at most m
    processes over the graph after J), the choices that reach them, and the true times of
    the stages that recompute (`exact`).

    With `any_count` (no stage count asked for) the count is not tracked: best[ANY][m] is the
    fastest chain of any length, and best[0][m] is 0 at the whole graph (nothing left to
    place, processes left idle). No stage's cost depends on how many stages follow it (its
    in-flight count comes from the processes after it), so the chains are the same, and the
    search makes N(N+1)/2 passes over the [J, I] tables instead of about N^3/6."""

    def __init__(
        self,
        graph: PlanGraph,
        settings: PlanSettings,
        tables: PairTables,
        model: AllReduce,
        replicate: bool,
        any_count: bool = False,
    ) -> None:
        self.graph, self.settings, self.tables = graph, settings, tables
        self.model, self.replicate, self.any_count = model, replicate, any_count
        self.times = PairTimes.of(tables, settings)
        self.trainable = (
            tables.trainable[None, :] - tables.trainable[:, None] + tables.tied_trainable
        )
        self.sums = StageBytes(
            params=tables.params[None, :] - tables.params[:, None] + tables.tied_params,
            trainable=self.trainable,
            kept=tables.kept,
            received=tables.crossing[:, None],
            sent=tables.crossing[None, :],
            copied=tables.copied,
            segment=0.0,
            backward=_backward_peaks(graph, tables, settings),
        )
        count = len(tables.ideals)
        self.last = np.zeros(count, dtype=bool)
        self.last[-1] = True  # stage I \ J is the last when I is the whole graph
        self.bounds: dict[Pair, float] = {}  # needy pairs' cheap lower bounds
        self.exact: dict[Pair, float] = {}
        self.recomputed: dict[Pair, tuple[int, ...]] = {}
        self.proven = True  # no recompute search was thinned
        self.best: list[list[np.ndarray]] = []
        self.choice: dict[tuple[int, int, int], tuple[int, int]] = {}

    def run(self) -> None:
        """Fill best[c][m] with the current costs (each needy stage at its lower bound until
        `resolve` sets its true time)."""
        n, count = self.settings.gpus, len(self.tables.ideals)
        counts = ANY + 1 if self.any_count else n + 1
        self.best = [[np.full(count, math.inf) for _ in range(n + 1)] for _ in range(counts)]
        self.choice = {}
        for m in range(n + 1 if self.any_count else 1):
            self.best[0][m][-1] = 0.0
        for m in range(1, n + 1):  # ascending: best[.][m - r] is final when best[.][m] reads it
            replicas = range(1, m + 1 if self.replicate else 2)
            # with any count, more replicas first: on a tie the chain keeps fewer stages
            for r in reversed(replicas) if self.any_count else replicas:
                cost = self._costs(m, r)
                for c in [ANY] if self.any_count else range(1, m - r + 2):
                    self._extend(c, m, r, cost)

    def _time(self, r: int) -> np.ndarray:
        """[J, I]: stage I \\ J's time with r replicas, without recompute."""
        # linear in the bytes: a number per byte times the table, not the formula on the table
        per_byte = allreduce_ms(1.0, r, self.settings, self.model, self.graph.link_ms_per_byte)
        coefficient = allreduce_share_ms(per_byte, r, self.settings)
        share = coefficient * self.trainable if coefficient else 0.0  # free: no [J, I] product
        comm: tuple[Any, Any] = (0.0, 0.0)  # free links (infinite bandwidth): no [J, I] max
        if self.times.comm.any():
            comm = (self.times.comm[:, None], self.times.comm[None, :])
        return replicated_time_ms(self.times.compute, share, *comm, r, np.maximum)

    def _costs(self, m: int, r: int) -> np.ndarray:
        """[J, I]: the cost of stage I \\ J with r of m processes: its time where it fits as it
        is, or once `resolve`d; a lower bound where recompute may fit it; else infinite."""
        time_r = self._time(r)
        if math.isfinite(self.settings.memory_bytes):
            cost = self._capped(time_r, m, r)
        else:  # every stage fits
            cost = np.where(self.tables.inside, time_r, math.inf)
        for overrides in (self.bounds, self.exact):  # the true time where known
            for (pm, pr, j, i), value in overrides.items():
                if (pm, pr) == (m, r):
                    cost[j, i] = value
        return cost

    def _capped(self, time_r: np.ndarray, m: int, r: int) -> np.ndarray:
        """[J, I]: `time_r` where the stage fits the memory cap as it is, or where recompute
        may fit it (`settle` finds out); else infinite."""
        cap = self.settings.memory_bytes
        shape = replica_shape(self.settings, r, m)
        memory = self._memory(self.sums, shape, r)
        cost = np.where(self.tables.inside & (memory <= cap), time_r, math.inf)
        if self.settings.recompute != "never":
            js, is_ = np.nonzero(self.tables.inside & (memory > cap))
            fixed = self._memory(replace(self.sums, kept=0.0), shape, r)
            possible = self.tables.floor(js, is_, shape.in_flight) <= cap - fixed[js, is_]
            cost[js[possible], is_[possible]] = time_r[js[possible], is_[possible]]
        return cost

    def _memory(self, sums: StageBytes, shape: ScheduleShape, replicas: int) -> np.ndarray:
        """[J, I]: one replica's bytes under the memory cap; the links' buffers depend on
        whether the stage is the first (J empty) or the last (I whole)."""
        count = len(self.tables.ideals)

        def total(index: int, is_last: bool) -> np.ndarray:
            memory = stage_memory(
                self.settings,
                index,
                self.graph.optimizer_factor,
                sums,
                np.maximum,
                shape=shape,
                last=is_last,
                replicas=replicas,
            )
            return np.broadcast_to(np.asarray(memory.total, dtype=np.float64), (count, count))

        memory = total(1, False).copy()
        memory[:, self.last] = total(1, True)[:, self.last]
        memory[0, :] = total(0, False)[0, :]
        memory[0, self.last] = total(0, True)[0, self.last]
        return memory

    def _extend(self, c: int, m: int, r: int, cost: np.ndarray) -> None:
        """Try stage I \\ J with r replicas in front of c - 1 stages on m - r processes."""
        count = cost.shape[0]
        if self.any_count:  # a last stage (best[0]: 0 at the whole graph) or more after it
            after = np.minimum(self.best[0][m - r], self.best[ANY][m - r])
            candidate = np.maximum(cost, after[None, :])
        elif c == 1:  # the last stage: I must be the whole graph
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

    def path(self, stages: int, processes: int) -> list[_Step]:
        """The chain's stages, first stage first."""
        steps, j, c, m = [], 0, stages, processes
        whole = len(self.tables.ideals) - 1
        while c:
            i, r = self.choice[c, m, j]
            steps.append(_Step((m, r, j, i)))
            j, m = i, m - r
            c = (ANY if i != whole else 0) if self.any_count else c - 1
        return steps

    def _stage(self, pair: Pair) -> tuple[list[int], list[int], tuple[int, bool]]:
        """(nodes before it, its nodes, its position) of a pair's stage."""
        _, _, j, i = pair
        ideals = self.tables.ideals
        position = (0 if j == 0 else 1, i == len(ideals) - 1)  # all the memory reads of it
        return members(ideals[j]), members(ideals[i] & ~ideals[j]), position

    def _needy(self, pair: Pair) -> bool:
        """Whether the pair's stage does not fit as it is."""
        if not math.isfinite(self.settings.memory_bytes):
            return False
        m, r, _, _ = pair
        before, stage, position = self._stage(pair)
        found = evaluate_replicated_stage(
            self.graph, self.settings, position, before, stage, r, m, self.model
        )
        return found.memory.total > self.settings.memory_bytes

    def settled(self, pair: Pair) -> bool:
        """Whether the pair's cost is its true time: it fits as it is, or its recompute was
        searched."""
        return pair in self.exact or not self._needy(pair)

    def true_cost(self, pair: Pair) -> float:
        """A settled pair's time."""
        if pair in self.exact:
            return self.exact[pair]
        m, r, _, _ = pair
        before, stage, position = self._stage(pair)
        return evaluate_replicated_stage(
            self.graph, self.settings, position, before, stage, r, m, self.model
        ).time_ms

    def settle(self, pair: Pair, upper: float) -> None:
        """Raise a needy pair's cost: first to a cheap lower bound on its recompute
        (`added_lower_bound`), the next time the chain uses it to its true time, searching
        only recompute sets that keep it within `upper` (a plan that fast exists, so one
        slower cannot be optimal)."""
        m, r, _, _ = pair
        before, stage, position = self._stage(pair)
        shape = replica_shape(self.settings, r, m)
        sums = stage_bytes(self.graph, before, stage, ())
        fixed = stage_memory(
            self.settings,
            position[0],
            self.graph.optimizer_factor,
            replace(sums, kept=0, segment=0),
            shape=shape,
            last=position[1],
            replicas=r,
        ).total
        room = MemoryRoom(self.settings.memory_bytes - fixed, shape.in_flight)
        base = evaluate_replicated_stage(
            self.graph, self.settings, position, before, stage, r, m, self.model
        )
        one = evaluate_stage(self.graph, self.settings, position[0], before, stage, ())
        share = allreduce_share_ms(base.allreduce_ms, r, self.settings)
        if pair not in self.bounds:
            added = added_lower_bound(self.graph, stage, room, sums.kept)
            self.bounds[pair] = replicated_time_ms(
                one.compute_ms + added, share, one.comm_in_ms, one.comm_out_ms, r
            )
            if math.isinf(added):
                self.exact[pair] = math.inf
            return
        budget = upper * r - one.compute_ms - share  # recompute beyond it: slower than `upper`
        sent = sent_nodes(self.graph, before, stage)
        found = cheapest_recompute(self.graph, stage, room, max(budget, 0.0), sent)
        self.proven = self.proven and found.exact
        if found.chosen is None:  # none fits, or none within `upper`
            self.exact[pair] = math.inf
            return
        self.recomputed[pair] = found.chosen
        self.exact[pair] = evaluate_replicated_stage(
            self.graph, self.settings, position, before, stage, r, m, self.model, found.chosen
        ).time_ms

    def chosen(self, pair: Pair) -> tuple[int, ...]:
        return self.recomputed.get(pair, ())


def _backward_peaks(graph: PlanGraph, tables: PairTables, settings: PlanSettings) -> np.ndarray:
    """[J, I]: the backward peak of stage I \\ J, exactly (needed only under a memory cap)."""
    if not math.isfinite(settings.memory_bytes):
        return np.zeros((len(tables.ideals), len(tables.ideals)))
    return tables.backward_floor(most=graph.size)
