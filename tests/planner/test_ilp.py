"""The integer program against brute force: the same model, solved another way."""

import math

import pytest

from vpipe.planner.bruteforce import solve_brute_force
from vpipe.planner.ilp import solve_ilp

from .test_dp import TIED_SEEDS, random_case


@pytest.mark.parametrize("seed", [*range(250), *TIED_SEEDS])
def test_ilp_matches_brute_force(seed):
    graph, settings = random_case(seed)
    expected = solve_brute_force(graph, settings)
    found = solve_ilp(graph, settings)
    assert found.feasible == expected.feasible
    if expected.feasible:
        assert found.optimal
        assert math.isclose(found.bottleneck_ms, expected.bottleneck_ms, rel_tol=1e-6)
