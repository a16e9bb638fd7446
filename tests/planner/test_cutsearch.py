"""cutsearch against brute force on small random DAGs, with and without costly cuts: chain_of
costs every stage of every split as costmodel.evaluate_stage does; best_chain in the windows for
the optimum's cap finds the optimum over every split (and below it, nothing within the cap);
find_chain's splits are real and within the cap; band_ideals lists exactly the ideals a brute
force finds; best_contiguous is the best of every split of its order into runs; Budget by
hand."""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable

import numpy as np
import pytest

from vpipe.planner.costmodel import evaluate_stage
from vpipe.planner.cuts import depth_first_order
from vpipe.planner.cutsearch import (
    Budget,
    Chain,
    band_ideals,
    best_chain,
    best_contiguous,
    chain_of,
    find_chain,
)
from vpipe.planner.exact import cut_costs
from vpipe.planner.graph import PlanGraph
from vpipe.planner.precedence import Units
from vpipe.planner.schema import PlanSettings
from vpipe.planner.windows import stage_windows

from .bruteforce_cuts import (
    flags_of,
    least_bottleneck,
    least_work,
    mask_of,
    mask_work,
    members,
    small_case,
    splits,
    stage_works,
    unit_ideals,
)

SEEDS = range(40)
PLENTY = 10**8  # search steps: never the limit here
BANDWIDTHS = (math.inf, math.inf, 0.001, 0.0002)  # GB/s: the random graphs' bytes are small


def case(seed: int) -> tuple[PlanGraph, Units, int, PlanSettings]:
    """A graph of at most 8 nodes, its units, stages, and settings (links may be slow)."""
    graph, units, stages = small_case(seed, max_size=8)
    bandwidth = random.Random(seed + 2).choice(BANDWIDTHS)
    settings = PlanSettings(gpus=stages, memory_bytes=math.inf, bandwidth_gbps=bandwidth)
    return graph, units, stages, settings


Timer = Callable[[int, int], float]


def stage_timer(graph: PlanGraph, units: Units, settings: PlanSettings) -> Timer:
    """evaluate_stage's time of the stage between two unit ideals, nothing recomputed (a
    stage's index changes its memory only)."""

    @functools.cache
    def time(before: int, upto: int) -> float:
        stage = units.nodes(members(upto & ~before))
        done = units.nodes(members(before))
        return evaluate_stage(graph, settings, 0, done, stage, ()).time_ms

    return time


def cut_matrix(units: Units, chain: tuple[int, ...]) -> np.ndarray:
    return np.array([flags_of(cut, units.size) for cut in chain])


def assert_real_split(units: Units, chain: Chain, stages: int) -> tuple[int, ...]:
    """Every unit once, no stage empty, every edge forward; returns its chain of cuts."""
    assert len(chain.stages) == stages and all(chain.stages)
    assert sorted(u for stage in chain.stages for u in stage) == list(range(units.size))
    stage_of = {u: k for k, stage in enumerate(chain.stages) for u in stage}
    assert all(stage_of[p] <= stage_of[v] for v in range(units.size) for p in units.preds[v])
    cuts = [0]
    for stage in chain.stages:
        cuts.append(cuts[-1] | sum(1 << u for u in stage))
    return tuple(cuts)


def assert_costed(chain: Chain, cuts: tuple[int, ...], time: Timer) -> None:
    expected = [time(a, b) for a, b in itertools.pairwise(cuts)]
    assert chain.stage_ms == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert chain.bottleneck_ms == pytest.approx(max(expected), rel=1e-9, abs=1e-12)


def least_time(units: Units, stages: int, time: Timer) -> float:
    """The least slowest stage time over every split."""
    return least_bottleneck(unit_ideals(units), stages, time)[0]


@pytest.mark.parametrize("seed", SEEDS)
def test_chain_of_costs_every_stage_as_the_cost_model(seed: int) -> None:
    graph, units, stages, settings = case(seed)
    costs = cut_costs(graph, settings, units)
    time = stage_timer(graph, units, settings)
    for chain in itertools.islice(splits(units, stages), 30):
        found = chain_of(units, costs, cut_matrix(units, chain))
        assert found.stages == tuple(tuple(members(b & ~a)) for a, b in itertools.pairwise(chain))
        assert_costed(found, chain, time)


@pytest.mark.parametrize("seed", SEEDS)
def test_best_chain_in_the_optimums_windows_is_the_optimum(seed: int) -> None:
    graph, units, stages, settings = case(seed)
    costs = cut_costs(graph, settings, units)
    time = stage_timer(graph, units, settings)
    optimum = least_time(units, stages, time)
    for cap in (optimum, optimum * 1.3):
        windows = stage_windows(units, stages, cap)
        assert windows is not None
        search = best_chain(units, windows, costs, stages, Budget(PLENTY), PLENTY)
        assert search.complete and search.chain is not None
        assert search.chain.bottleneck_ms == pytest.approx(optimum, rel=1e-9, abs=1e-12)
        assert_costed(search.chain, assert_real_split(units, search.chain, stages), time)


@pytest.mark.parametrize("seed", SEEDS)
def test_best_chain_below_the_optimum_proves_it_above(seed: int) -> None:
    """Below the optimum, no chain in the windows is within the cap: the search says so."""
    graph, units, stages, settings = case(seed)
    costs = cut_costs(graph, settings, units)
    time = stage_timer(graph, units, settings)
    optimum, by_work = least_time(units, stages, time), least_work(units, stages)
    cap = optimum * (1 - 1e-6)
    windows = stage_windows(units, stages, cap)
    if cap >= by_work:  # some split's work fits the cap (links are slow): it has windows
        assert windows is not None
    if windows is not None:
        search = best_chain(units, windows, costs, stages, Budget(PLENTY), PLENTY)
        assert search.complete
        assert search.chain is None or search.chain.bottleneck_ms > cap
        if search.chain is not None:
            assert_costed(search.chain, assert_real_split(units, search.chain, stages), time)


@pytest.mark.parametrize("seed", SEEDS)
def test_best_chain_out_of_steps_claims_nothing(seed: int) -> None:
    graph, units, stages, settings = case(seed)
    windows = stage_windows(units, stages, float(units.work.sum()))
    assert windows is not None
    search = best_chain(units, windows, cut_costs(graph, settings, units), stages, Budget(0), 10)
    assert search.complete == (stages == 1)  # one stage lists no cuts: nothing to run out of


@pytest.mark.parametrize("seed", SEEDS)
def test_find_chain_finds_a_real_split_within_the_cap(seed: int) -> None:
    graph, units, stages, settings = case(seed)
    costs = cut_costs(graph, settings, units)
    time = stage_timer(graph, units, settings)
    by_work = least_work(units, stages)
    for cap in (by_work, by_work * 1.2, float(units.work.sum())):
        windows = stage_windows(units, stages, cap)
        assert windows is not None
        chain = find_chain(units, windows, costs, stages, Budget(PLENTY))
        if chain is None:
            assert cap != units.work.sum()  # with every split allowed, the first fit fits
            continue
        cuts = assert_real_split(units, chain, stages)
        assert_costed(chain, cuts, time)
        assert max(stage_works(units, cuts)) <= cap * (1 + 1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_band_ideals_are_every_ideal_of_the_band_in_range(seed: int) -> None:
    graph, units, stages, _ = case(seed)
    ideals = set(unit_ideals(units))
    by_work = least_work(units, stages)
    for cap in (by_work, by_work * 1.5):
        windows = stage_windows(units, stages, cap)
        assert windows is not None
        for s in range(stages - 1):
            forced = mask_of(windows.forced(s))
            band = [int(u) for u in windows.band(s)]
            low = windows.cum_min[s] - mask_work(units, forced)
            high = windows.cum_max[s] - mask_work(units, forced)
            tolerance = 1e-9 * max(abs(high), 1.0)
            expected = set()
            for chosen in range(1 << len(band)):
                picked = sum(1 << u for i, u in enumerate(band) if chosen >> i & 1)
                work = mask_work(units, picked)
                if forced | picked in ideals and low - tolerance <= work <= high + tolerance:
                    expected.add(chosen)
            listed = list(band_ideals(units, band, low, high, Budget(PLENTY)))
            assert len(listed) == len(set(listed))  # each once
            assert set(listed) == expected


@pytest.mark.parametrize("seed", SEEDS)
def test_best_contiguous_is_the_best_split_of_its_order_into_runs(seed: int) -> None:
    graph, units, stages, settings = case(seed)
    costs = cut_costs(graph, settings, units)
    time = stage_timer(graph, units, settings)
    size = units.size
    for order in (list(range(size)), depth_first_order(units.preds, units.succs)):
        prefixes = [sum(1 << u for u in order[:k]) for k in range(size + 1)]
        best = min(
            max(time(prefixes[a], prefixes[b]) for a, b in itertools.pairwise((0, *ends, size)))
            for ends in itertools.combinations(range(1, size), stages - 1)
        )
        chain = best_contiguous(units, costs, order, stages)
        cuts = assert_real_split(units, chain, stages)
        assert set(cuts) <= set(prefixes)  # runs of the order
        assert_costed(chain, cuts, time)
        assert chain.bottleneck_ms == pytest.approx(best, rel=1e-9, abs=1e-12)


def test_budget_spends_shares_and_settles() -> None:
    budget = Budget(100)
    assert budget.spend(30) and budget.steps == 70 and not budget.exhausted
    share = budget.share(50)
    assert share.steps == 50
    assert share.spend(20) and not share.spend(40)  # 30 left: 40 is too many
    assert share.exhausted and share.steps == 0
    budget.settle(share, 50)  # the share used all 50
    assert budget.steps == 20 and not budget.exhausted
    assert budget.share(50).steps == 20  # never more than is left
    assert not budget.spend(21) and budget.exhausted and budget.steps == 0
