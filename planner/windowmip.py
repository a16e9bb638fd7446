"""The integer program over cumulative stage indicators, inside stage windows (HiGHS).

When a window holds too many cuts for `cutsearch.best_chain` to list, the same question goes
to an integer program (the formulation of SALBP-2 by step variables, Pastor & Ferrer 2009;
issue 17 suggests it), with every variable the windows settle left out:

    y[v,s] = 1 iff unit v sits in stage s or earlier    (free only for earliest <= s < latest;
                                                          0 before, 1 from latest on)
    y[v,s] <= y[v,s+1]                                   (monotone in s)
    y[v,s] <= y[p,s]       for every edge p -> v         (every edge forward)
    sum_v work_v (y[v,s] - y[v,s-1]) <= T                (stage s's work)
    cum_min[s] <= sum_v work_v y[v,s] <= cum_max[s]      (the windows' cut bounds: tighter LP)
    sum_v (y[v,s] - y[v,s-1]) >= 1                       (no stage empty)
    minimise T <= cap

It bounds work only; the caller costs the split it returns with the full stage time. A node
limit (not the clock) ends a hard search, so the same input gives the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vpipe.planner.highs import silent_highs
from vpipe.planner.precedence import Units
from vpipe.planner.windows import TOLERANCE, Windows

if TYPE_CHECKING:
    import highspy

MIP_NODES = 500  # branch-and-bound nodes one program may use
MIP_SECONDS = 2.0  # a safety net only: the node limit ends most searches first


@dataclass(frozen=True, eq=False)
class ProgramResult:
    """What the program proved about the least work-bottleneck within the windows."""

    cuts: np.ndarray | None  # bool [S + 1, unit] of its best split (the empty set first)
    optimal: bool  # `cuts` is the least work-bottleneck within the windows
    infeasible: bool  # no split fits the windows at all
    lower_ms: float  # no split within the windows has a work-bottleneck below this


@dataclass(frozen=True, eq=False)
class _Columns:
    """Where each free y[v,s] sits among the program's columns."""

    earliest: np.ndarray
    latest: np.ndarray
    first: np.ndarray  # column of y[v, earliest[v]]
    count: int  # free columns; T is the next one

    def of(self, v: int, s: int) -> int | float:
        """y[v,s]: a column, or the constant it is fixed to."""
        if s < self.earliest[v]:
            return 0.0
        if s >= self.latest[v]:
            return 1.0
        return int(self.first[v] + s - self.earliest[v])


def solve_window_program(
    units: Units,
    windows: Windows,
    stages: int,
    step: float | None = None,
    nodes: int = MIP_NODES,
) -> ProgramResult:
    """The least work-bottleneck split within `windows` (at most their cap), by HiGHS. With a
    quantum `step` (`windows.quantum`), work is counted in steps and T is a whole number of
    them, so HiGHS can round its bound up, as the planner does."""
    scale = step or 1.0
    columns = _columns(windows)
    rows = _Rows()
    _monotone(units, columns, rows)
    _forward(units, columns, rows)
    _stages(units, windows, columns, rows, stages, scale)
    solver = silent_highs()
    count = columns.count + 1
    upper = np.ones(count)
    upper[-1] = windows.cap_ms * (1 + TOLERANCE) / scale
    if step:
        upper[-1] = np.floor(upper[-1] + 1e-6)
    solver.addVars(count, np.zeros(count), upper)
    cost = np.zeros(count)
    cost[-1] = 1.0
    solver.changeColsCost(count, np.arange(count, dtype=np.int32), cost)
    integral = count if step else columns.count
    solver.changeColsIntegrality(
        integral, np.arange(integral, dtype=np.int32), np.ones(integral, np.uint8)
    )
    rows.add_to(solver)
    for option, value in (
        ("mip_rel_gap", 0.0),
        ("mip_abs_gap", 1e-9),
        ("mip_max_nodes", nodes),
        ("time_limit", MIP_SECONDS),
    ):
        solver.setOptionValue(option, value)
    solver.run()
    return _result(solver, columns, units, stages, scale)


def _columns(windows: Windows) -> _Columns:
    spans = np.maximum(windows.latest - windows.earliest, 0)
    first = np.concatenate([[0], np.cumsum(spans)[:-1]]).astype(np.int64)
    return _Columns(windows.earliest, windows.latest, first, int(spans.sum()))


class _Rows:
    """Rows gathered as (columns, values, low, high), constants folded into the bounds."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.indices: list[int] = []
        self.values: list[float] = []
        self.low: list[float] = []
        self.high: list[float] = []

    def add(self, terms: list[tuple[float, int | float]], low: float, high: float) -> None:
        constant = 0.0
        merged: dict[int, float] = {}
        for value, y in terms:
            if isinstance(y, int):
                merged[y] = merged.get(y, 0.0) + value
            else:
                constant += value * y
        if not merged:
            return
        self.starts.append(len(self.indices))
        self.indices.extend(merged)
        self.values.extend(merged.values())
        self.low.append(low - constant)
        self.high.append(high - constant)

    def add_to(self, solver: highspy.Highs) -> None:
        solver.addRows(
            len(self.low),
            np.array(self.low),
            np.array(self.high),
            len(self.indices),
            np.array(self.starts, dtype=np.int32),
            np.array(self.indices, dtype=np.int32),
            np.array(self.values),
        )


def _monotone(units: Units, columns: _Columns, rows: _Rows) -> None:
    for v in range(units.size):
        for s in range(int(columns.earliest[v]), int(columns.latest[v]) - 1):
            rows.add([(1.0, columns.of(v, s + 1)), (-1.0, columns.of(v, s))], 0.0, np.inf)


def _forward(units: Units, columns: _Columns, rows: _Rows) -> None:
    for v in range(units.size):
        for p in units.preds[v]:
            top = min(int(columns.latest[v]), int(columns.latest[p]))
            for s in range(int(columns.earliest[v]), top):
                rows.add([(1.0, columns.of(p, s)), (-1.0, columns.of(v, s))], 0.0, np.inf)


def _stages(
    units: Units, windows: Windows, columns: _Columns, rows: _Rows, stages: int, scale: float
) -> None:
    bottleneck = columns.count  # the column of T
    work = units.work / scale
    for s in range(stages):
        present = [v for v in range(units.size) if columns.earliest[v] <= s]
        before = [v for v in range(units.size) if columns.earliest[v] <= s - 1]
        load = [(float(work[v]), columns.of(v, s)) for v in present]
        load += [(-float(work[v]), columns.of(v, s - 1)) for v in before]
        rows.add([*load, (-1.0, bottleneck)], -np.inf, 0.0)
        count = [(1.0, columns.of(v, s)) for v in present]
        count += [(-1.0, columns.of(v, s - 1)) for v in before]
        rows.add(count, 1.0, np.inf)
        slack = TOLERANCE * windows.cap_ms
        cumulative = [(float(work[v]), columns.of(v, s)) for v in present]
        low, high = windows.cum_min[s] - slack, windows.cum_max[s] + slack
        rows.add(cumulative, low / scale, high / scale)


def _result(
    solver: highspy.Highs, columns: _Columns, units: Units, stages: int, scale: float
) -> ProgramResult:
    import highspy

    status = solver.getModelStatus()
    info = solver.getInfo()
    if status == highspy.HighsModelStatus.kInfeasible:
        return ProgramResult(None, optimal=True, infeasible=True, lower_ms=np.inf)
    solution = solver.getSolution().col_value
    found = info.primal_solution_status == 2 and len(solution) == columns.count + 1
    cuts = _cuts(np.array(solution), columns, units, stages) if found else None
    optimal = status == highspy.HighsModelStatus.kOptimal and cuts is not None
    lower = float(info.objective_function_value) if optimal else float(info.mip_dual_bound)
    return ProgramResult(cuts, optimal=optimal, infeasible=False, lower_ms=lower * scale)


def _cuts(solution: np.ndarray, columns: _Columns, units: Units, stages: int) -> np.ndarray:
    """The cuts (bool [S + 1, unit], empty set first) of a solution's y values."""
    cuts = np.zeros((stages + 1, units.size), dtype=bool)
    for s in range(stages):
        for v in range(units.size):
            y = columns.of(v, s)
            cuts[s + 1, v] = (solution[y] > 0.5) if isinstance(y, int) else y > 0.5
    return cuts
