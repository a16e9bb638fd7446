"""`--solver auto` when the dp cannot prove its answer: the ILP's answer, never a worse one."""

import math

import pytest

import vpipe.planner.recompute as recompute
from vpipe.planner.bruteforce import solve_brute_force
from vpipe.planner.planning import graph_for, solve

from .randomgraphs import case_profile, random_case


@pytest.mark.parametrize("seed", range(150))
def test_auto_reaches_the_optimum_when_the_dp_is_thinned(seed, monkeypatch):
    """With one Pareto point per state the dp's recompute searches are thinned (unproven),
    so `auto` runs the ILP; the answer must be brute force's, whichever solver found it."""
    monkeypatch.setattr(recompute, "SEARCH_WORK", 0)
    monkeypatch.setattr(recompute, "MIN_FRONT", 1)
    graph, settings = random_case(seed)
    profile = case_profile(seed)
    assert graph_for(profile, settings) == graph  # the same graph random_case built
    expected = solve_brute_force(graph, settings)
    found = solve(profile, settings, "auto")
    assert found.feasible == expected.feasible
    if expected.feasible:
        assert math.isclose(found.bottleneck_ms, expected.bottleneck_ms, rel_tol=1e-6)
        assert found.optimal
