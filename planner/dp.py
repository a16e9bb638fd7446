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
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from vpipe.planner.costmodel import (
    StageBytes,
    backward_peak_bytes,
    boundary_ms,
    comm_ms,
    schedule_shape,
    sent_nodes,
    stage_compute_ms,
    stage_memory,
    stage_time_ms,
)
from vpipe.planner.cuts import cut_family, members
from vpipe.planner.graph import PlanGraph
from vpipe.planner.recompute import (
    MemoryRoom,
    Recompute,
    added_lower_bound,
    cheapest_recompute,
    own_saved_bytes,
)
from vpipe.planner.schema import PlanSettings
from vpipe.planner.split import Split

IDEAL_LIMIT = 3000  # beyond this many cuts, use a restricted family and say so
THRESHOLDS = 32  # transient levels the vectorised memory floor tries


class PairTables:
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
        # needed_later[I, u]: u is produced in I and needed outside it (the outputs by the loss)
        successor = np.zeros((n, n))
        for u in range(n):
            successor[list(graph.succs[u]), u] = 1
        successor[:, list(graph.outputs)] = 1  # a model output is needed by everything after it
        needed_later = member * (((1 - member) @ successor) > 0)
        needed_later[-1] = 0.0  # the full set sends nothing
        self.crossing = needed_later @ out
        # each end's CPU for the cut's transfers, and its boundary's share of the calls' cost
        self.link = needed_later @ np.array(graph.link_ms) + boundary_ms(graph)
        # held[I, t]: tensor t is produced in I and some holder of it is in I too, or it is
        # sent on from I (autograd holds what a stage sends as its backward's root)
        held = np.zeros_like(member)
        for t in range(n):
            if graph.holders[t]:
                held[:, t] = member[:, t] * member[:, list(graph.holders[t])].max(axis=1)
        for u in range(n):
            t = graph.owner[u]
            held[:, t] = np.maximum(held[:, t], member[:, t] * needed_later[:, u])
        # a holder of t is a descendant of t (and a stage sending t holds it), so for J inside
        # I the stage I \ J keeps t iff held[I, t] and t is not in J
        kept = (
            internal[None, :] - internal[:, None] + (held @ out)[None, :] - (member * out) @ held.T
        )
        self.kept = kept  # [J, I]: bytes stage I \ J keeps per micro-batch, recompute off
        # copied[J, I]: bytes stage I \ J copies to send (outputs not laid out densely)
        sends_copy = needed_later * np.array(graph.copied_bytes, dtype=np.float64)
        self.copied = sends_copy.sum(axis=1)[None, :] - member @ sends_copy.T
        outside = 1 - member
        self.inside = (member @ outside.T) == 0  # [J, I]: J is a subset of I
        np.fill_diagonal(self.inside, False)
        # for recompute's memory floor (see _floor): own saved bytes of the nodes whose
        # transient exceeds each threshold, summed per ideal
        transient = np.array([graph.transient_bytes(i) for i in range(n)], dtype=np.float64)
        own = np.array([own_saved_bytes(graph, i) for i in range(n)], dtype=np.float64)
        levels = np.unique(transient)
        self.thresholds = levels[
            np.linspace(0, len(levels) - 1, min(THRESHOLDS, len(levels))).astype(int)
        ]
        self.above = member @ (own[:, None] * (transient[:, None] > self.thresholds[None, :]))
        self.member = member
        self.backward = np.array(graph.backward_bytes, dtype=np.float64)
        # [J, I]: bytes of the tied copies stage I \ J holds (costmodel.tied_copy_bytes): a
        # user of the tie is in it and the owner is not
        self.tied_params = np.zeros((len(ideals), len(ideals)))
        self.tied_trainable = np.zeros_like(self.tied_params)
        for tie in graph.ties:
            users = member[:, list(tie.users)].sum(axis=1)
            owner = member[:, tie.users[0]]
            copy = (users[None, :] > users[:, None]) & (owner[None, :] == owner[:, None])
            self.tied_params += tie.param_bytes * copy
            self.tied_trainable += tie.trainable_bytes * copy

    def backward_floor(self, most: int = THRESHOLDS) -> np.ndarray:
        """[J, I]: a lower bound on the backward peak of stage I \\ J (exact when the nodes'
        `backward_bytes` take at most `most` values; else rounded down to one of `most`
        levels, and `_run` checks the stages a chain uses exactly)."""
        levels = np.unique(self.backward[self.backward > 0])
        if len(levels) > most:
            levels = levels[np.linspace(0, len(levels) - 1, most).astype(int)]
        floor = np.zeros((len(self.ideals), len(self.ideals)))
        for level in levels:  # ascending: the last level a stage reaches is its floor
            count = self.member @ (self.backward >= level)
            floor[count[None, :] - count[:, None] > 0] = level
        return floor

    def floor(self, js: np.ndarray, is_: np.ndarray, in_flight: int) -> np.ndarray:
        """A lower bound on in_flight x kept + peak of stages I \\ J over every recompute
        choice (recompute._least_memory's relaxation, vectorised): between consecutive
        thresholds t_q < t_q+1, the best relaxed choice costs at least t_q plus in_flight x the
        own bytes of the nodes whose transient exceeds t_q+1."""
        top = self.thresholds[-1]
        least = np.full(len(js), top)
        for q in range(len(self.thresholds) - 1):
            rest = self.above[is_, q + 1] - self.above[js, q + 1]
            least = np.minimum(least, self.thresholds[q] + in_flight * rest)
        return least


Step = tuple[int, int, int]  # (stage index k, ideal J before it, ideal I up to it)


@dataclass(frozen=True)
class PairTimes:
    """Every pair's time without recompute, the same at each stage index."""

    compute: np.ndarray  # [J, I]: stage I \\ J's compute, with its two cuts' transfers
    comm: np.ndarray  # [I]: each side's communication time of the cut after ideal I
    stage: np.ndarray  # [J, I]: stage I \\ J's time

    @staticmethod
    def of(tables: PairTables, settings: PlanSettings) -> PairTimes:
        compute = stage_compute_ms(
            tables.compute[None, :] - tables.compute[:, None],
            0.0,
            tables.link[:, None],
            tables.link[None, :],
        )
        comm = comm_ms(tables.crossing, settings)
        return PairTimes(
            compute, comm, stage_time_ms(compute, comm[:, None], comm[None, :], np.maximum)
        )

    def stage_at(self, speed: float) -> np.ndarray:
        """Every pair's time on a device `speed` times as slow as the profiled one."""
        if speed == 1.0:
            return self.stage
        compute = self.compute * speed
        return stage_time_ms(compute, self.comm[:, None], self.comm[None, :], np.maximum)


@dataclass(frozen=True)
class _Position:
    """The pairs' costs for one stage index k: what the chain search reads and raises."""

    cost: np.ndarray  # [J, I]: time of stage I \ J at k (a lower bound while `needy`)
    needy: np.ndarray  # [J, I]: does not fit without recompute
    room: np.ndarray  # [J, I]: bytes left for in-flight x kept + segment (MemoryRoom.room)
    sums: StageBytes  # [J, I] tables without recompute (kept as is, segment 0)
    in_flight: int
    speed: float  # PlanSettings.speed(k)


@dataclass(frozen=True)
class _Search:
    """What the lazy search ends with: the best chain's steps and their recompute searches."""

    path: list[Step]  # empty: nothing fits
    bottleneck_ms: float
    recomputed: dict[Step, Recompute]
    proven: bool  # no recompute search on the way was thinned
    lower_bound_ms: float  # on the optimum over these cuts


def solve_dp(graph: PlanGraph, settings: PlanSettings) -> Split:
    start = time.perf_counter()
    ideals, cuts = cut_family(graph, IDEAL_LIMIT)
    tables = PairTables(graph, ideals)
    times = PairTimes.of(tables, settings)
    positions = [_position(graph, settings, tables, times, k) for k in range(settings.gpus)]
    search = _run(graph, settings, tables, times, positions)
    found = bool(search.path)
    bound = _work_bound(graph, settings, float(tables.compute[-1]))
    if cuts == "all":
        bound = max(bound, search.lower_bound_ms)
    exact = cuts == "all" and (search.proven or (found and search.bottleneck_ms <= bound))
    stages = tuple(tuple(members(ideals[i] & ~ideals[j])) for _, j, i in search.path)
    chosen = [search.recomputed.get(step) for step in search.path]
    return Split(
        solver="dp",
        feasible=found,
        stages=stages,
        recompute=tuple((c.chosen or ()) if c else () for c in chosen),
        bottleneck_ms=search.bottleneck_ms,
        optimal=exact,  # for an infeasible answer: proven that nothing fits
        lower_bound_ms=search.bottleneck_ms
        if exact and found
        else min(bound, search.bottleneck_ms),
        seconds=time.perf_counter() - start,
        cuts=cuts,
        stage_ms=tuple(float(positions[k].cost[j, i]) for k, j, i in search.path),
        stage_bytes=tuple(
            _memory(graph, settings, k, positions[k], j, i, stage, c)
            for (k, j, i), stage, c in zip(search.path, stages, chosen, strict=True)
        ),
    )


def _work_bound(graph: PlanGraph, settings: PlanSettings, work: float) -> float:
    """No split beats the whole work shared so that every stage finishes at once (stage k
    doing T / speed_k of it in time T), nor the largest node on the fastest device."""
    speeds = [settings.speed(k) for k in range(settings.gpus)]
    largest = max(map(graph.compute_ms, range(graph.size)))
    # every stage also pays the calls' cost: at least one stage's worth on top of the work
    call = graph.call_ms
    return max((work + call) / sum(1 / s for s in speeds), (largest + call) * min(speeds))


def _position(
    graph: PlanGraph, settings: PlanSettings, tables: PairTables, times: PairTimes, k: int
) -> _Position:
    """Every pair's time and memory at stage index k, without recompute; a pair that does not
    fit so is `needy` (costed at its time without recompute: a lower bound) unless no recompute
    choice can fit it (then its cost is infinite)."""
    limited = math.isfinite(settings.memory_bytes)
    count = len(tables.ideals)
    shape = schedule_shape(settings, k)
    sums = StageBytes(
        params=tables.params[None, :] - tables.params[:, None] + tables.tied_params,
        trainable=tables.trainable[None, :] - tables.trainable[:, None] + tables.tied_trainable,
        kept=tables.kept,
        received=tables.crossing[:, None],
        sent=tables.crossing[None, :],
        copied=tables.copied,
        segment=0.0,
        backward=tables.backward_floor() if limited else np.zeros((count, count)),
    )
    memory = stage_memory(settings, k, graph.optimizer_factor, sums, np.maximum).total
    # what no recompute choice changes (costmodel.recompute_free_bytes)
    fixed = stage_memory(settings, k, graph.optimizer_factor, replace(sums, kept=0.0), np.maximum)
    room = settings.memory_bytes - np.asarray(fixed.total)  # fields are arrays here
    cost = np.where(tables.inside, times.stage_at(settings.speed(k)), math.inf)
    over = tables.inside & (memory > settings.memory_bytes)
    js, is_ = np.nonzero(over)
    hopeless = tables.floor(js, is_, shape.in_flight) > room[js, is_]  # nothing can fit
    cost[js[hopeless], is_[hopeless]] = math.inf
    over[js[hopeless], is_[hopeless]] = False
    return _Position(cost, over, room, sums, shape.in_flight, settings.speed(k))


def _memory(
    graph: PlanGraph,
    settings: PlanSettings,
    k: int,
    position: _Position,
    j: int,
    i: int,
    stage: Sequence[int],
    recompute: Recompute | None,
) -> float:
    """The memory of a chosen stage as the tables and its recompute search cost it."""
    shape = position.cost.shape
    at = {
        f.name: float(np.broadcast_to(getattr(position.sums, f.name), shape)[j, i])
        for f in fields(position.sums)
    }
    sums = replace(StageBytes(**at), backward=backward_peak_bytes(graph, stage))
    if recompute is not None:
        sums = replace(sums, kept=recompute.kept, segment=recompute.segment)
    return float(stage_memory(settings, k, graph.optimizer_factor, sums).total)


def _run(
    graph: PlanGraph,
    settings: PlanSettings,
    tables: PairTables,
    times: PairTimes,
    positions: list[_Position],
) -> _Search:
    """Lazy exact search: a stage that needs recompute first counts at its time without
    recompute (a lower bound: recompute only adds time). Whenever the best chain uses such a
    stage, its cost is raised to `added_lower_bound`'s, and if the chain still uses it, to its
    true cost; then the chain is searched again. When the best chain uses only true costs, it
    is optimal. Every fully costed chain is a plan, so the best of them caps what a later stage
    may cost: a recompute search stops at that cap."""
    lazy = _Lazy(graph, tables, times, positions)
    first = lazy.chain.value()  # recompute free everywhere: bounds the optimum from below
    while True:
        path = lazy.chain.path() if np.isfinite(lazy.chain.value()) else []
        if math.isfinite(settings.memory_bytes):
            lazy.exact_backward(path)
        todo = [step for step in path if lazy.needy(step) and step not in lazy.recomputed]
        if not todo:
            break
        for step in todo:
            lazy.cost(step)
        if all(not lazy.needy(step) or step in lazy.recomputed for step in path):
            lazy.upper = min(lazy.upper, max(lazy.cost_of(step) for step in path))  # a plan
    return _Search(
        path=path,
        bottleneck_ms=lazy.chain.value() if path else math.inf,
        recomputed={step: lazy.recomputed[step] for step in path if step in lazy.recomputed},
        proven=not lazy.unproven,
        lower_bound_ms=lazy.relaxed_bound() if lazy.unproven else first,
    )


class _Lazy:
    """The lazy search's state: the chain over every pair's current cost, and what is known
    of the stages the best chains have used."""

    def __init__(
        self, graph: PlanGraph, tables: PairTables, times: PairTimes, positions: list[_Position]
    ) -> None:
        self.graph, self.tables, self.times, self.positions = graph, tables, times, positions
        self.chain = _Chain([position.cost for position in positions], len(tables.ideals))
        self.recomputed: dict[Step, Recompute] = {}
        self.bounded: set[Step] = set()  # needy stages costed at added_lower_bound
        self.unproven: dict[Step, float] = {}  # thinned searches: their lower bound
        self.checked: set[Step] = set()  # stages whose backward peak is exact now
        self.upper = math.inf  # the best fully costed chain so far

    def needy(self, step: Step) -> bool:
        k, j, i = step
        return bool(self.positions[k].needy[j, i])

    def cost_of(self, step: Step) -> float:
        k, j, i = step
        return float(self.positions[k].cost[j, i])

    def stage(self, step: Step) -> list[int]:
        _, j, i = step
        return members(self.tables.ideals[i] & ~self.tables.ideals[j])

    def exact_backward(self, path: list[Step]) -> None:
        """Replace the rounded-down backward peak of the path's stages by the exact one."""
        for step in path:
            if step in self.checked:
                continue
            self.checked.add(step)
            k, j, i = step
            at = self.positions[k]
            exact = backward_peak_bytes(self.graph, self.stage(step))
            at.room[j, i] -= exact - at.sums.backward[j, i]
            at.needy[j, i] = at.in_flight * self.tables.kept[j, i] > at.room[j, i]

    def cost(self, step: Step) -> None:
        """Raise a needy stage's cost: first to the cheap bound, then (if still chosen) to the
        cheapest recompute's."""
        k, j, i = step
        at, graph = self.positions[k], self.graph
        compute, comm = self.times.compute[j, i], self.times.comm
        budget = MemoryRoom(room=at.room[j, i], in_flight=at.in_flight)
        stage = self.stage(step)
        if step not in self.bounded:
            self.bounded.add(step)
            least = added_lower_bound(graph, stage, budget, self.tables.kept[j, i])
            if least > 0:
                slower = stage_time_ms((compute + least) * at.speed, comm[j], comm[i])
                self.chain.raise_cost(k, j, i, slower)
                return
        sending = sent_nodes(graph, members(self.tables.ideals[j]), stage)
        cap = self.upper / at.speed - compute  # recompute ms beyond which it cannot win
        found = cheapest_recompute(graph, stage, budget, cap, sending)
        if not found.exact:
            self.unproven[step] = at.cost[j, i]
        self.recomputed[step] = found
        added = stage_time_ms((compute + found.added_ms) * at.speed, comm[j], comm[i])
        self.chain.raise_cost(k, j, i, math.inf if found.chosen is None else added)

    def relaxed_bound(self) -> float:
        """The best chain with every thinned search at its lower bound."""
        relaxed = [position.cost.copy() for position in self.positions]
        for (k, j, i), low in self.unproven.items():
            relaxed[k][j, i] = low
        return _Chain(relaxed, len(self.tables.ideals)).value()


class _Chain:
    """Min-max over chains of ideals: best[k, I] and the J it came from.

    Costs only ever rise (a lower bound replaced by the true cost), so after a change only the
    columns whose cost rose, or whose chosen predecessor got worse, can change; the rest keep
    their minimum and its (first) argument. Updating just those gives the same tables as
    recomputing everything, in a fraction of the time."""

    def __init__(self, costs: list[np.ndarray], count: int) -> None:
        self.costs = costs
        self.count = count
        self.best = np.full((len(costs), count), math.inf)
        self.arg = np.zeros((len(costs), count), dtype=np.int64)
        for k in range(len(costs)):
            self._columns(k, np.arange(count))
        self.raised: dict[int, set[int]] = {}

    def raise_cost(self, stage: int, j: int, i: int, cost: float) -> None:
        """Replace a lower bound by the true cost (never lower: see the class docstring)."""
        self.costs[stage][j, i] = cost
        self.raised.setdefault(stage, set()).add(i)

    def value(self) -> float:
        self._update()
        return float(self.best[-1, -1])

    def _columns(self, k: int, columns: np.ndarray) -> np.ndarray:
        """Recompute stage k's best for `columns`; return those whose value changed."""
        previous = self.best[k - 1] if k else np.where(np.arange(self.count) == 0, 0.0, math.inf)
        value = np.maximum(previous[:, None], self.costs[k][:, columns])
        arg = np.argmin(value, axis=0)
        new = value[arg, np.arange(len(columns))]
        changed = columns[new != self.best[k, columns]]
        self.arg[k, columns] = arg
        self.best[k, columns] = new
        return changed

    def _update(self) -> None:
        worse = np.zeros(0, dtype=np.int64)  # ideals whose best at stage k - 1 rose
        for k in range(len(self.costs)):
            columns = set(self.raised.pop(k, ()))
            if len(worse):
                columns.update(np.flatnonzero(np.isin(self.arg[k], worse)).tolist())
            if not columns:
                worse = np.zeros(0, dtype=np.int64)
                continue
            worse = self._columns(k, np.array(sorted(columns)))

    def path(self) -> list[tuple[int, int, int]]:
        """The (stage, J, I) transitions of the best chain ending at the full set."""
        self._update()
        path = []
        i = self.count - 1
        for k in range(len(self.costs) - 1, -1, -1):
            j = int(self.arg[k, i])
            path.append((k, j, i))
            i = j
        return path[::-1]
