"""mincut.CrossingBound.least_bytes against brute force: the fewest bytes
(`costmodel.crossing_bytes`) over every ideal that holds the units that must be inside, only
allowed units, and is neither empty nor whole; for pins drawn from random nested ideals and from
stage windows, on small random DAGs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from vpipe.planner.costmodel import crossing_bytes
from vpipe.planner.graph import PlanGraph, plan_graph
from vpipe.planner.mincut import MAX_PINS, CrossingBound
from vpipe.planner.precedence import Units, units_of
from vpipe.planner.windows import stage_windows

from .bruteforce_cuts import (
    flags_of,
    least_work,
    mask_of,
    small_case,
    unit_ideals,
)
from .handmade import PROFILE

SEEDS = range(40)


def ideal_bytes(graph: PlanGraph, units: Units, mask: int) -> int:
    return crossing_bytes(graph, units.nodes([k for k in range(units.size) if mask >> k & 1]))


def least_by_brute_force(
    graph: PlanGraph, units: Units, ideals: list[int], inside: int, allowed: int
) -> float:
    """The fewest bytes over the ideals between the pins, neither empty nor whole (0: none)."""
    full = (1 << units.size) - 1
    between = [
        x for x in ideals if x & inside == inside and x & ~allowed == 0 and x not in (0, full)
    ]
    return min((ideal_bytes(graph, units, x) for x in between), default=0)


def pins(units: Units, inside: int, allowed: int) -> int:
    """The (first unit, last unit) pairs least_bytes tries (past MAX_PINS it answers 0)."""
    full = (1 << units.size) - 1
    firsts = sum(1 for u in range(units.size) if not units.preds[u] and allowed >> u & 1)
    lasts = sum(1 for u in range(units.size) if not units.succs[u] and not inside >> u & 1)
    return (1 if inside else firsts) * (1 if allowed != full else lasts)


def check(bound: CrossingBound, ideals: list[int], inside: int, allowed: int) -> float:
    """least_bytes equals the brute force's; returns it."""
    graph, units = bound.graph, bound.units
    found = bound.least_bytes(
        np.array(flags_of(inside, units.size)), np.array(flags_of(allowed, units.size))
    )
    expected = least_by_brute_force(graph, units, ideals, inside, allowed)
    if pins(units, inside, allowed) <= MAX_PINS:
        assert found == pytest.approx(expected, abs=1e-6), (inside, allowed)
    else:
        assert found == 0.0
    return found


@pytest.mark.parametrize("seed", SEEDS)
def test_least_bytes_of_any_cut_and_between_nested_ideals(seed: int) -> None:
    graph, units, _ = small_case(seed)
    ideals = unit_ideals(units)
    full = (1 << units.size) - 1
    bound = CrossingBound(graph, units)
    check(bound, ideals, 0, full)  # any cut at all
    rng = random.Random(seed)
    for _ in range(4):
        low, high = rng.choice(ideals), rng.choice(ideals)
        high |= low  # nested: the union is an ideal too
        check(bound, ideals, low, high)
        check(bound, ideals, low, full)
        check(bound, ideals, 0, high)


@pytest.mark.parametrize("seed", SEEDS)
def test_least_bytes_inside_the_windows(seed: int) -> None:
    """As the exact planner asks: the units that must sit by cut s, and those that may."""
    graph, units, stages = small_case(seed)
    ideals = unit_ideals(units)
    optimum = least_work(units, stages)
    bound = CrossingBound(graph, units)
    for cap in (optimum, optimum * 1.5):
        windows = stage_windows(units, stages, cap)
        assert windows is not None
        for s in range(stages - 1):
            inside = mask_of(windows.forced(s))
            allowed = mask_of(windows.earliest <= s)
            check(bound, ideals, inside, allowed)


def test_least_bytes_on_the_hand_worked_chain() -> None:
    """n0 -> ... -> n5 sending 100, 200, 200, 50, 50 B, n5 (10 B) the model's output: the
    cheapest cut sends 50 B (after n3 or n4); one pinned after n2 sends n2's 200 B; none lies
    strictly between nothing and nothing, or all and all."""
    graph = plan_graph(PROFILE)
    units = units_of(graph)
    bound = CrossingBound(graph, units)
    none, every = np.zeros(6, dtype=bool), np.ones(6, dtype=bool)
    assert bound.least_bytes(none, every) == pytest.approx(50)
    first_three = np.array([True, True, True, False, False, False])
    assert bound.least_bytes(first_three, first_three) == pytest.approx(200)
    assert bound.least_bytes(none, first_three) == pytest.approx(100)  # after n0
    assert bound.least_bytes(first_three, every) == pytest.approx(50)
    assert bound.least_bytes(none, none) == 0.0
    assert bound.least_bytes(every, every) == 0.0
