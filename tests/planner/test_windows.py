"""windows.stage_windows against brute force over every split of small random DAGs: every split
whose stages each hold at most the cap sits inside the windows (each unit's stage, each cut's
work), and windows exist for every cap a split meets; plus the bounds' hand-worked figures on a
chain, and work_lower_bound, quantum and round_up by hand."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest

from vpipe.planner.exact import solve_exact
from vpipe.planner.graph import plan_graph
from vpipe.planner.precedence import Units, units_of
from vpipe.planner.windows import Windows, quantum, round_up, stage_windows, work_lower_bound

from .bruteforce_cuts import least_work, mask_work, members, small_case, splits, stage_works
from .handmade import SETTINGS, chain_profile

SEEDS = range(40)


def caps_met(units: Units, stages: int) -> list[float]:
    """The least work-bottleneck over every split, and larger ones that some split meets."""
    optimum = least_work(units, stages)
    met = sorted({max(stage_works(units, chain)) for chain in splits(units, stages)})
    assert met[0] == pytest.approx(optimum)
    return [optimum, *met[len(met) // 2 :: max(1, len(met) // 4)]]


def assert_inside(units: Units, windows: Windows, chain: tuple[int, ...]) -> None:
    slack = 1e-9 * max(windows.cap_ms, 1.0)
    for s, (before, upto) in enumerate(itertools.pairwise(chain)):
        for u in members(upto & ~before):
            assert windows.earliest[u] <= s <= windows.latest[u], (u, s)
        work = mask_work(units, upto)
        assert windows.cum_min[s] - slack <= work <= windows.cum_max[s] + slack, s


@pytest.mark.parametrize("seed", SEEDS)
def test_every_split_within_the_cap_sits_inside_the_windows(seed: int) -> None:
    _, units, stages = small_case(seed)
    for cap in caps_met(units, stages):
        windows = stage_windows(units, stages, cap)
        assert windows is not None, cap  # a split meets the cap: no contradiction
        assert ((0 <= windows.earliest) & (windows.latest <= stages - 1)).all()
        assert (windows.earliest <= windows.latest).all()
        assert windows.cum_max[-1] == pytest.approx(units.work.sum())
        within = list(splits(units, stages, cap))
        assert within
        for chain in within:
            assert_inside(units, windows, chain)


@pytest.mark.parametrize("seed", SEEDS)
def test_no_windows_below_the_even_share_or_the_largest_unit(seed: int) -> None:
    _, units, stages = small_case(seed)
    for cap in (units.work.sum() / stages * 0.99, units.work.max() * 0.99):
        assert not list(splits(units, stages, cap))  # the brute force agrees: none exists
        assert stage_windows(units, stages, cap) is None


@pytest.mark.parametrize("seed", SEEDS)
def test_work_lower_bound_is_below_the_optimum(seed: int) -> None:
    _, units, stages = small_case(seed)
    bound = work_lower_bound(units, stages)
    assert bound == pytest.approx(max(units.work.sum() / stages, units.work.max()))
    assert bound <= caps_met(units, stages)[0] * (1 + 1e-12)


def chain_units(*fwd: float) -> Units:
    return units_of(plan_graph(chain_profile(*fwd)))


def test_a_chain_at_its_even_cap_is_pinned() -> None:
    """Work 0, 3, 3, 3 on 3 stages at a cap of 3: n2 has 6 ms of ancestors, so stage
    ceil(6 / 3) - 1 = 1 at the earliest, and 6 ms of descendants, so 3 - 2 = 1 at the latest."""
    units = chain_units(1, 1, 1)
    windows = stage_windows(units, 3, 3.0)
    assert windows is not None
    assert windows.earliest.tolist() == [0, 0, 1, 2]
    assert windows.latest.tolist() == [0, 0, 1, 2]
    assert windows.cum_min == pytest.approx([3, 6, 9])
    assert windows.cum_max == pytest.approx([3, 6, 9])
    assert windows.band(0).size == 0 and windows.forced(1).tolist() == [True, True, True, False]
    assert stage_windows(units, 3, 2.9) is None  # 9 ms of work do not fit 3 x 2.9


def test_heavy_ancestors_that_share_a_stage_push_a_unit_later() -> None:
    """Work 0, 3, 3, 3 on 3 stages at a cap of 4.5: n3's ancestors weigh 9, so the plain bound
    puts it at stage ceil(9 / 4.5) - 1 = 1 at the earliest; but n2 is there at the earliest
    too, and n2 and n3 together (6) exceed the cap: stage 2. From the other side n1 goes to
    stage 0, and the chain is pinned although the cap would take one and a half units."""
    units = chain_units(1, 1, 1)
    windows = stage_windows(units, 3, 4.5)
    assert windows is not None
    assert windows.earliest.tolist() == [0, 0, 1, 2]
    assert windows.latest.tolist() == [0, 0, 1, 2]


def test_a_cap_below_the_largest_unit_has_no_windows() -> None:
    units = chain_units(1, 2)  # work 0, 3, 6: 9 in all
    assert work_lower_bound(units, 2) == 6.0
    assert stage_windows(units, 2, 5.9) is None
    windows = stage_windows(units, 2, 6.0)
    assert windows is not None and windows.earliest.tolist() == [0, 0, 1]


def test_quantum_is_the_largest_power_of_ten_every_value_is_a_multiple_of() -> None:
    assert quantum(np.array([1000.0, 3000.0])) == 1000.0
    assert quantum(np.array([1.5, 3.0])) == pytest.approx(0.1)
    assert quantum(np.array([0.125, 2.0])) == pytest.approx(0.001)
    assert quantum(np.array([0.1 + 0.2, 0.7])) == pytest.approx(0.1)  # float noise is ignored
    assert quantum(np.array([0.1234567, 1.0])) is None  # 0.1234567 is on no grid down to 1e-6


def test_quantum_does_not_take_a_value_off_the_grid_for_float_noise() -> None:
    """1.00003 is a multiple of 1e-5 and of nothing coarser: only float noise (~1e-15 of a
    value) is forgiven, not 3e-5 of a step. Taken for a multiple of 1, the exact planner
    rounded its bound up to 1's grid and called a 3 ms split of the chain below optimal."""
    assert quantum(np.array([1.00003, 1.0])) == pytest.approx(1e-5)
    graph = plan_graph(chain_profile(1.00003 / 3, 1 / 3, 1 / 3, 1 / 3))
    split = solve_exact(graph, replace(SETTINGS, gpus=2))
    assert split.optimal
    assert max(split.stage_ms) == pytest.approx(2.00003)


def test_round_up_to_the_quantum() -> None:
    assert round_up(1.23, 0.1) == pytest.approx(1.3)
    assert round_up(1.2, 0.1) == pytest.approx(1.2)
    assert round_up(0.1 + 0.2, 0.1) == pytest.approx(0.3)  # already a multiple, within noise
    assert round_up(1.23, None) == 1.23
