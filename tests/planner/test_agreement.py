"""Every solver against the one cost model, on random small graphs and settings: the dynamic
program, the integer program and the exact cut search reach brute force's optimum, and each
one's own figures for every stage of its split (its tables, its constraints' values, its cut
vectors) equal `costmodel.evaluate_stage`'s, which is what the plan prints and the runtime is
measured against."""

import dataclasses
import math

import pytest

from vpipe.planner.bruteforce import solve_brute_force
from vpipe.planner.dp import solve_dp
from vpipe.planner.exact import solve_exact
from vpipe.planner.graph import PlanGraph
from vpipe.planner.ilp import solve_ilp
from vpipe.planner.predict import predict_stages
from vpipe.planner.schema import PlanSettings
from vpipe.planner.split import Split

from .randomgraphs import TIED_SEEDS, random_case

SEEDS = [*range(250), *TIED_SEEDS]


def assert_figures_agree(graph: PlanGraph, settings: PlanSettings, split: Split) -> None:
    """The solver's per-stage time (and memory, where it models memory) is the cost model's,
    and the split fits and is as slow as the solver says (to the solvers' tolerance, 1e-6)."""
    predicted = predict_stages(graph, settings, split.stages, split.recompute)
    assert split.stage_ms == pytest.approx([p.time_ms for p in predicted], rel=1e-6, abs=1e-9)
    if split.stage_bytes:
        assert split.stage_bytes == pytest.approx([p.memory.total for p in predicted], rel=1e-6)
    assert all(p.memory.total <= settings.memory_bytes for p in predicted)
    assert max(p.time_ms for p in predicted) == pytest.approx(split.bottleneck_ms, rel=1e-6)
    assert sorted(n for stage in split.stages for n in stage) == list(range(graph.size))


@pytest.mark.parametrize("seed", SEEDS)
def test_dp_ilp_and_brute_force_agree_stage_by_stage(seed, monkeypatch):
    if seed % 5 == 0:  # the dp's backward peaks rounded down to 2 levels: chosen stages rechecked
        monkeypatch.setattr("vpipe.planner.dp.THRESHOLDS", 2)
    graph, settings = random_case(seed)
    expected = solve_brute_force(graph, settings)
    for found in (solve_dp(graph, settings), solve_ilp(graph, settings)):
        assert found.feasible == expected.feasible, found.solver
        if not expected.feasible:
            continue
        assert found.optimal, found.solver
        assert math.isclose(found.bottleneck_ms, expected.bottleneck_ms, rel_tol=1e-6)
        assert len(found.stage_bytes) == settings.gpus, found.solver  # both model memory
        assert_figures_agree(graph, settings, found)
    if expected.feasible:
        assert_figures_agree(graph, settings, expected)


@pytest.mark.parametrize("seed", SEEDS[::5])
def test_the_exact_search_agrees_without_a_memory_cap(seed):
    graph, settings = random_case(seed)
    unlimited = dataclasses.replace(settings, memory_bytes=math.inf)
    found = solve_exact(graph, unlimited)
    assert found.optimal
    assert math.isclose(
        found.bottleneck_ms, solve_brute_force(graph, unlimited).bottleneck_ms, rel_tol=1e-6
    )
    assert_figures_agree(graph, unlimited, found)


@pytest.mark.parametrize("seed", SEEDS[::4])
def test_the_dp_weighs_each_device_by_its_speed(seed):
    """With a measured speed per stage index (`--stage-speeds`, `vpipe-train --adapt`), the dp
    reaches brute force's optimum, with memory caps and recompute, and its figures are the cost
    model's."""
    graph, settings = random_case(seed)
    speeds = tuple(1.0 + (seed * 7 + 3 * k) % 5 / 2 for k in range(settings.gpus))
    slowed = dataclasses.replace(settings, stage_speeds=speeds)
    expected = solve_brute_force(graph, slowed)
    found = solve_dp(graph, slowed)
    assert found.feasible == expected.feasible
    if expected.feasible:
        assert found.optimal
        assert math.isclose(found.bottleneck_ms, expected.bottleneck_ms, rel_tol=1e-6)
        assert_figures_agree(graph, slowed, found)
