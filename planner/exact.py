"""The exact planner for any size of DAG when memory is unlimited: bounds closing on the optimum.

With no memory cap, recompute never pays, and the problem is SALBP-2 (assembly line balancing:
`planner/windows.py`) with the cost model's stage time. The solver keeps a lower bound and a
best split (the upper bound) and closes the gap between them:

1. lower bound: the work shared evenly, or the largest unit (rounded up to the profile's time
   quantum, when its times have one). The windows for it, if any split fits them, are searched
   for a split (`cutsearch.find_chain`): on branchy graphs of many small nodes one is often as
   even as the bound, and then it is proven at once;
2. upper bound: the best contiguous split of two topological orders, if better;
3. then caps T between the bounds, first just below the best split (to prove it), then
   halving the gap. For each: no split fits the windows for T, or some cut inside them must
   carry more bytes than T allows (`mincut`): the optimum is above T. Otherwise the dynamic
   program over every cut inside the windows (`cutsearch.best_chain`) finds the best chain: at
   most T, it is the optimum; above T, the optimum is above T too. When the cuts are too many
   for the budget, the first-fit search may still lower the upper bound;
4. last, if the gap is still open and cuts cost only work, the integer program (`windowmip`)
   for a split better than the best, inside the windows for just below it.

Every search counts steps against a budget, not the clock, and the integer program its nodes:
the same input gives the same plan on every machine. What is left when they end is the stated
gap.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np

from vpipe.planner.costmodel import boundary_ms, comm_ms
from vpipe.planner.cuts import depth_first_order
from vpipe.planner.cutsearch import (
    Budget,
    Chain,
    CutCosts,
    best_chain,
    best_contiguous,
    chain_of,
    find_chain,
)
from vpipe.planner.graph import PlanGraph
from vpipe.planner.mincut import CrossingBound
from vpipe.planner.precedence import Units, units_of
from vpipe.planner.schema import PlanSettings
from vpipe.planner.split import Split
from vpipe.planner.windowmip import solve_window_program
from vpipe.planner.windows import (
    TOLERANCE,
    Windows,
    quantum,
    round_up,
    stage_windows,
    work_lower_bound,
)

SEARCH_STEPS = 1_500_000  # search steps for the probes of one solve (about a second)
PROBE_STEPS = 500_000  # of which one search may take at most this many
EVEN_STEPS = 3_000_000  # for the first search, for a split as even as the bound (free cuts)
LIST_STEPS = 300_000  # and one listing of every cut in its windows (past it: undecided)
CUT_LIMIT = 20_000  # candidate cuts per position that `best_chain` accepts
MAX_PROBES = 40  # caps tried between the bounds
PROOF_GAP = 2e-8  # relative: a plan this close to its lower bound is proven (float rounding)
# what the bounds cost, charged as search steps per unit (windows) or node (a minimum cut)
WINDOW_STEPS_PER_UNIT = 60
CUT_STEPS_PER_NODE = 20


@dataclass(frozen=True, eq=False)
class Problem:
    """One planning problem as the searches see it."""

    graph: PlanGraph
    units: Units
    costs: CutCosts
    stages: int
    step: float | None  # the work's quantum (`windows.quantum`)
    crossing: CrossingBound | None  # when links are slow: the least bytes a cut carries


@dataclass(frozen=True)
class Bounds:
    """Where the search stands: a best split found and a proven lower bound on the optimum."""

    best: Chain
    lower_ms: float

    @property
    def closed(self) -> bool:
        return self.best.bottleneck_ms <= self.lower_ms * (1 + PROOF_GAP) + 1e-12

    def improve(self, chain: Chain | None) -> Bounds:
        if chain is None or chain.bottleneck_ms >= self.best.bottleneck_ms:
            return self
        return dataclasses.replace(self, best=chain)

    def at_least(self, lower_ms: float) -> Bounds:
        return dataclasses.replace(self, lower_ms=max(self.lower_ms, lower_ms))


def solve_exact(graph: PlanGraph, settings: PlanSettings, steps: int = SEARCH_STEPS) -> Split:
    """The fastest split with nothing recomputed and memory unlimited, proven when the bounds
    meet within the step budget; otherwise the best found and the lower bound."""
    start = time.perf_counter()
    units = units_of(graph)
    if settings.gpus > units.size:
        return Split(solver="exact", feasible=False, seconds=time.perf_counter() - start)
    costs = cut_costs(graph, settings, units)
    crossing = CrossingBound(graph, units) if costs.ms_per_byte and settings.gpus > 1 else None
    problem = Problem(graph, units, costs, settings.gpus, quantum(units.work), crossing)
    bounds = close_gap(problem, Budget(steps))
    node_stages = tuple(units.nodes(list(stage)) for stage in bounds.best.stages)
    return Split(
        solver="exact",
        feasible=True,
        stages=node_stages,
        recompute=tuple(() for _ in node_stages),
        bottleneck_ms=bounds.best.bottleneck_ms,
        optimal=bounds.closed,
        lower_bound_ms=bounds.best.bottleneck_ms
        if bounds.closed
        else min(bounds.lower_ms, bounds.best.bottleneck_ms),
        seconds=time.perf_counter() - start,
        stage_ms=bounds.best.stage_ms,
    )


def close_gap(problem: Problem, budget: Budget) -> Bounds:
    """Raise the lower bound and lower the best split until they meet or the budget ends."""
    units, stages, step = problem.units, problem.stages, problem.step
    # the busiest stage's work, on the grid work sums lie on, and the calls every stage pays
    lower = round_up(work_lower_bound(units, stages), step) + problem.graph.call_ms
    found = None
    windows = _windows(problem, budget, lower)
    if windows is None:
        lower = _above(lower, step)
    elif problem.costs.free:  # many small nodes: often a split this even exists
        found = find_chain(units, windows, problem.costs, stages, Budget(EVEN_STEPS))
    else:
        found = _find(problem, windows, budget)
    if found is not None and found.bottleneck_ms <= lower * (1 + PROOF_GAP):
        return Bounds(found, lower)  # as even as the bound: nothing else to try
    bounds = Bounds(_contiguous(problem), lower).improve(found)
    undecided = bounds.best.bottleneck_ms  # caps from here up are decided, or not worth it
    cap = _below(undecided, problem)
    for _ in range(MAX_PROBES):
        if bounds.closed or budget.exhausted or cap < bounds.lower_ms:
            break
        bounds, decided = _probe(problem, budget, bounds, cap)
        if not decided:
            undecided = min(undecided, cap)
        undecided = min(undecided, bounds.best.bottleneck_ms)
        cap = _between(bounds.lower_ms, undecided, step if problem.costs.free else None)
        if cap >= undecided * (1 - PROOF_GAP / 2):
            break
    if not bounds.closed and problem.costs.free:  # bounded by its own node limit
        bounds = _program(problem, bounds)
    return bounds


def _probe(problem: Problem, budget: Budget, bounds: Bounds, cap: float) -> tuple[Bounds, bool]:
    """Decide whether a split with slowest stage at most `cap` exists: (new bounds, decided).
    No split's work fits `cap` means the work, so the time, is at least the quantum's next
    multiple; no split's time fits means that only when cuts cost nothing but work."""
    windows = _windows(problem, budget, cap)
    if windows is None:
        return bounds.at_least(_above(cap, problem.step)), True
    if _transfer_too_slow(problem, windows, cap, budget):
        return bounds.at_least(cap), True
    share = budget.share(LIST_STEPS)
    granted = share.steps
    search = best_chain(problem.units, windows, problem.costs, problem.stages, share, CUT_LIMIT)
    budget.settle(share, granted)
    if search.complete:
        bounds = bounds.improve(search.chain)
        if search.chain is not None and search.chain.bottleneck_ms <= cap * (1 + TOLERANCE):
            return bounds.at_least(search.chain.bottleneck_ms), True  # the best of all
        return bounds.at_least(_above(cap, problem.step if problem.costs.free else None)), True
    return bounds.improve(_find(problem, windows, budget)), False


def _program(problem: Problem, bounds: Bounds) -> Bounds:
    """Last, the integer program for a split better than the best (`windowmip`), when some
    windows held too many cuts to list. It bounds the work of the slowest stage, which with
    free cuts is its time: its optimum is the answer. (With costly cuts the plans the bisection
    leaves open are transfer-bound, and a bound on work would not close them.)"""
    cap = _below(bounds.best.bottleneck_ms, problem)
    if cap < bounds.lower_ms:
        return bounds
    windows = stage_windows(problem.units, problem.stages, cap)
    if windows is None:
        return bounds.at_least(_above(cap, problem.step))
    result = solve_window_program(problem.units, windows, problem.stages, problem.step)
    if result.infeasible:  # nothing better than the best: it is optimal
        return bounds.at_least(_above(cap, problem.step))
    if result.cuts is not None:
        bounds = bounds.improve(chain_of(problem.units, problem.costs, result.cuts))
    return bounds.at_least(min(result.lower_ms, _above(cap, problem.step)))


def _windows(problem: Problem, budget: Budget, cap: float) -> Windows | None:
    budget.spend(problem.units.size * WINDOW_STEPS_PER_UNIT)
    return stage_windows(problem.units, problem.stages, cap)


def _find(problem: Problem, windows: Windows, budget: Budget) -> Chain | None:
    share = budget.share(PROBE_STEPS)
    granted = share.steps
    found = find_chain(problem.units, windows, problem.costs, problem.stages, share)
    budget.settle(share, granted)
    return found


def _transfer_too_slow(problem: Problem, windows: Windows, cap: float, budget: Budget) -> bool:
    """Whether some cut, anywhere its window allows, carries more than `cap` can send."""
    if problem.crossing is None:
        return False
    most = cap * (1 + TOLERANCE) / problem.costs.ms_per_byte
    for s in range(problem.stages - 1):
        if not budget.spend(problem.graph.size * CUT_STEPS_PER_NODE):
            return False
        if problem.crossing.least_bytes(windows.forced(s), windows.earliest <= s) > most:
            return True
    return False


def _below(best_ms: float, problem: Problem) -> float:
    """The largest cap that a split better than `best_ms` could meet."""
    if problem.costs.free and problem.step is not None:
        return best_ms - problem.step
    return best_ms * (1 - PROOF_GAP / 2)


def _between(lower: float, upper: float, step: float | None) -> float:
    """The next cap to try: halfway, on the quantum's grid (rounded down, not below `lower`)."""
    middle = (lower + upper) / 2
    if step is None:
        return middle
    return max(lower, math.floor(middle / step + 1e-6) * step)


def _above(cap: float, step: float | None) -> float:
    """The least value the optimum can take once proven above `cap`."""
    if step is None:
        return cap
    return (math.floor(cap / step + 1e-6) + 1) * step


def _contiguous(problem: Problem) -> Chain:
    """The better of the best contiguous splits of two topological orders."""
    units = problem.units
    orders = (list(range(units.size)), depth_first_order(units.preds, units.succs))
    return min(
        (best_contiguous(units, problem.costs, order, problem.stages) for order in orders),
        key=lambda chain: chain.bottleneck_ms,
    )


def cut_costs(graph: PlanGraph, settings: PlanSettings, units: Units) -> CutCosts:
    """What cuts cost besides work, for the units of `graph`."""
    unit_of = np.zeros(graph.size, dtype=np.int64)
    for k, members in enumerate(units.members):
        unit_of[list(members)] = k
    pairs = sorted(
        {(u, int(unit_of[v])) for u in range(graph.size) for v in graph.succs[u]}
        - {(u, int(unit_of[u])) for u in range(graph.size)}
    )
    output = np.zeros(graph.size, dtype=bool)
    output[list(graph.outputs)] = True
    return CutCosts(
        ms_per_byte=comm_ms(1.0, settings),  # linear in the bytes
        unit_of=unit_of,
        readers=np.array([t for _, t in pairs], dtype=np.int64),
        reader_nodes=np.array([u for u, _ in pairs], dtype=np.int64),
        output=output,
        out_bytes=np.array(graph.out_bytes, dtype=np.float64),
        link_ms=np.array(graph.link_ms, dtype=np.float64),
        boundary_ms=boundary_ms(graph),
    )
