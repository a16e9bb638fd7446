"""windowmip.solve_window_program against brute force on small random DAGs: its optimum is the
least work-bottleneck over every split that fits the windows (with and without a time quantum),
its split is real and inside the windows, its bound never above the optimum, and it is
infeasible when the cap is below the optimum; and (a bug) that it fails after another HiGHS
solve in the process used another thread count."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from vpipe.planner.graph import plan_graph
from vpipe.planner.highs import silent_highs
from vpipe.planner.precedence import Units, units_of
from vpipe.planner.windowmip import solve_window_program
from vpipe.planner.windows import Windows, quantum, stage_windows

from .bruteforce_cuts import (
    least_work,
    mask_of,
    mask_work,
    members,
    small_case,
    splits,
    stage_works,
    unit_ideals,
)
from .handmade import chain_profile

SEEDS = range(40)


def fits(units: Units, windows: Windows, chain: tuple[int, ...]) -> bool:
    """Whether a split keeps every unit in its window and every cut's work in its range."""
    slack = 1e-9 * max(windows.cap_ms, 1.0)
    for s, (before, upto) in enumerate(itertools.pairwise(chain)):
        if any(not windows.earliest[u] <= s <= windows.latest[u] for u in members(upto & ~before)):
            return False
        if not windows.cum_min[s] - slack <= mask_work(units, upto) <= windows.cum_max[s] + slack:
            return False
    return True


def least_within(units: Units, windows: Windows, stages: int) -> float:
    """The least work-bottleneck over every split within the cap that fits the windows."""
    return min(
        max(stage_works(units, chain))
        for chain in splits(units, stages, windows.cap_ms)
        if fits(units, windows, chain)
    )


@pytest.mark.parametrize("seed", SEEDS)
def test_its_optimum_is_the_brute_force_optimum_within_the_windows(seed: int) -> None:
    _, units, stages = small_case(seed)
    ideals = set(unit_ideals(units))
    optimum = least_work(units, stages)
    for cap, step in ((optimum, None), (optimum * 1.25, quantum(units.work))):
        windows = stage_windows(units, stages, cap)
        assert windows is not None
        expected = least_within(units, windows, stages)
        assert expected == pytest.approx(optimum)  # the windows keep every split within the cap
        result = solve_window_program(units, windows, stages, step)
        assert result.optimal and not result.infeasible and result.cuts is not None
        assert result.lower_ms == pytest.approx(expected, rel=1e-6)
        chain = tuple(mask_of(cut) for cut in result.cuts)
        assert chain[0] == 0 and chain[-1] == (1 << units.size) - 1
        nested = all(a & b == a and a != b for a, b in itertools.pairwise(chain))
        assert nested  # and no stage empty
        assert all(cut in ideals for cut in chain)  # every edge forward
        assert fits(units, windows, chain)
        assert max(stage_works(units, chain)) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_it_is_infeasible_below_the_optimum(seed: int) -> None:
    _, units, stages = small_case(seed)
    optimum = least_work(units, stages)  # work is in half milliseconds: none lies in between
    below = optimum - 0.25
    windows = stage_windows(units, stages, below)
    if windows is not None:
        assert solve_window_program(units, windows, stages).infeasible
    # the optimum's windows hold every split within the lower cap too: none fits it
    wide = stage_windows(units, stages, optimum)
    assert wide is not None
    result = solve_window_program(units, dataclasses.replace(wide, cap_ms=below), stages)
    assert result.infeasible and result.cuts is None


@pytest.mark.parametrize("seed", SEEDS[::4])
def test_a_search_cut_short_never_bounds_above_the_optimum(seed: int) -> None:
    _, units, stages = small_case(seed)
    optimum = least_work(units, stages)
    windows = stage_windows(units, stages, float(units.work.sum()))
    assert windows is not None
    result = solve_window_program(units, windows, stages, nodes=1)
    assert result.lower_ms <= optimum * (1 + 1e-9)
    if result.cuts is not None:
        chain = [mask_of(cut) for cut in result.cuts]
        assert max(stage_works(units, tuple(chain))) >= optimum


@pytest.mark.parametrize(("stages", "optimum"), [(2, 6.0), (3, 3.0), (4, 3.0)])
def test_a_chain_by_hand(stages: int, optimum: float) -> None:
    """Work 0, 3, 3, 3 in a chain: 3 + 3 | 3 on 2 stages; 3 a stage on 3; on 4 the free input
    is a stage of its own (no stage empty)."""
    units = units_of(plan_graph(chain_profile(1, 1, 1)))
    windows = stage_windows(units, stages, 9.0)
    assert windows is not None
    result = solve_window_program(units, windows, stages)
    assert result.optimal and result.lower_ms == pytest.approx(optimum)
    assert result.cuts is not None
    stage_count = [int((b & ~a).sum()) for a, b in itertools.pairwise(result.cuts)]
    assert min(stage_count) >= 1 and len(stage_count) == stages


def test_it_solves_after_another_highs_solve_in_the_process() -> None:
    """HiGHS makes one thread scheduler per process, at its first solve, with that solve's
    `threads`; the program once asked for 1 thread and, after any solve with another count (a
    `mincut` LP, PuLP's HiGHS in `ilp`, an earlier plan in the same process), got neither a
    split nor a proof. It now takes the scheduler as it finds it."""
    other = silent_highs()  # any solve at all, as the first in the process, with 2 threads
    other.setOptionValue("threads", 2)
    other.addVars(1, np.zeros(1), np.ones(1))
    other.run()
    units = units_of(plan_graph(chain_profile(1, 1, 1)))
    windows = stage_windows(units, 2, 9.0)
    assert windows is not None
    result = solve_window_program(units, windows, 2)
    assert result.optimal and result.lower_ms == pytest.approx(6.0)
