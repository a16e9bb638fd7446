"""The exact planner (memory unlimited) against brute force, and on the large shared profiles
against their proven optima (BASELINES.md)."""

import dataclasses
import math
import random
import re
import time

import pytest

from vpipe.planner.bruteforce import solve_brute_force
from vpipe.planner.cli import main
from vpipe.planner.exact import solve_exact
from vpipe.planner.graph import plan_graph
from vpipe.planner.planning import solve
from vpipe.planner.predict import predict_stages
from vpipe.planner.schema import PlanSettings, load_plan
from vpipe.profiler.pipedream import import_pipedream
from vpipe.profiler.schema import save_profile

from ..codegen.pipelines import straight
from ..conftest import PIPEDREAM
from .randomgraphs import random_profile

SEEDS = range(300)
BANDWIDTHS = (math.inf, math.inf, 0.001, 0.0002)  # GB/s: the random graphs' bytes are small


def unlimited_case(seed: int):
    """A random DAG of 2-10 nodes (skips, views, outputs, link costs), random stages, with and
    without communication; memory unlimited."""
    graph, settings, _ = unlimited_case_and_profile(seed)
    return graph, settings


def unlimited_case_and_profile(seed: int):
    rng = random.Random(seed)
    profile = random_profile(seed, rng.randint(2, 10), ties=seed % 7 == 0)
    graph = plan_graph(profile)
    settings = PlanSettings(
        gpus=rng.randint(1, min(5, graph.size)),
        memory_bytes=math.inf,
        bandwidth_gbps=rng.choice(BANDWIDTHS),
        schedule=rng.choice(["asp", "asp", "1f1b", "gpipe"]),
        microbatches=rng.choice([1, 2, 4]),
    )
    return graph, settings, profile


def slowest_stage(graph, settings, split) -> float:
    """The split's slowest stage as the cost model (`predict_stages`) costs it."""
    predictions = predict_stages(graph, settings, split.stages, split.recompute)
    return max(p.time_ms for p in predictions)


@pytest.mark.parametrize("seed", SEEDS)
def test_exact_matches_brute_force(seed):
    graph, settings = unlimited_case(seed)
    expected = solve_brute_force(graph, settings)
    found = solve_exact(graph, settings)
    assert found.feasible and expected.feasible
    assert found.optimal
    assert math.isclose(found.bottleneck_ms, expected.bottleneck_ms, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(found.lower_bound_ms, found.bottleneck_ms, rel_tol=1e-7, abs_tol=1e-12)
    # the split is real: every node placed once, every edge forward, and the cost model agrees
    assert sorted(n for stage in found.stages for n in stage) == list(range(graph.size))
    stage_of = {n: k for k, stage in enumerate(found.stages) for n in stage}
    assert all(stage_of[p] <= stage_of[n] for n in range(graph.size) for p in graph.preds[n])
    assert all(found.stages)
    assert math.isclose(slowest_stage(graph, settings, found), found.bottleneck_ms, rel_tol=1e-9)


@pytest.mark.parametrize("seed", range(0, 300, 3))
def test_a_cut_short_search_states_an_honest_bound(seed):
    """With almost no search steps the answer may be unproven, but its bound is never above
    the optimum and its split never below it."""
    graph, settings = unlimited_case(seed)
    optimum = solve_brute_force(graph, settings).bottleneck_ms
    found = solve_exact(graph, settings, steps=3)
    assert found.lower_bound_ms <= optimum * (1 + 1e-9) + 1e-12
    assert found.bottleneck_ms >= optimum * (1 - 1e-9) - 1e-12
    assert math.isclose(slowest_stage(graph, settings, found), found.bottleneck_ms, rel_tol=1e-9)
    if found.optimal:
        assert math.isclose(found.bottleneck_ms, optimum, rel_tol=1e-7, abs_tol=1e-12)


@pytest.mark.parametrize("seed", range(0, 300, 5))
def test_auto_under_a_cap_meets_brute_force_and_its_bound(seed):
    """Under a memory cap `auto` starts from the optimum without one: its answer is brute
    force's, and its lower bound never above it."""
    graph, settings, profile = unlimited_case_and_profile(seed)
    rng = random.Random(seed + 1)
    free = solve_exact(graph, settings)
    need = max(p.memory.total for p in predict_stages(graph, settings, free.stages, free.recompute))
    capped = dataclasses.replace(settings, memory_bytes=need * rng.uniform(0.7, 1.1))
    expected = solve_brute_force(graph, capped)
    found = solve(profile, capped)
    assert found.feasible == expected.feasible
    if expected.feasible:
        assert math.isclose(found.bottleneck_ms, expected.bottleneck_ms, rel_tol=1e-6)
        assert found.lower_bound_ms <= expected.bottleneck_ms * (1 + 1e-9)


def proven_optima() -> list[tuple[str, int, float]]:
    """(profile, GPUs, seconds) of BASELINES.md's proven no-communication optima."""
    baselines = PIPEDREAM / "BASELINES.md"
    if not baselines.exists():
        return []
    text = baselines.read_text()
    large = re.findall(r"^\| (\w+) \| (\d+) \| ([\d.]+) \|$", text, re.MULTILINE)
    return [(name, int(gpus), float(s)) for name, gpus, s in large]


SHARED = pytest.mark.skipif(
    not (PIPEDREAM / "inception_v3.graph.txt").exists(),
    reason="../shared/profiles/pipedream is not beside this checkout",
)


@SHARED
@pytest.mark.parametrize("name, gpus, optimum_s", proven_optima())
def test_large_profiles_reach_their_proven_optimum(name, gpus, optimum_s):
    graph = plan_graph(import_pipedream(PIPEDREAM / f"{name}.graph.txt"))
    settings = PlanSettings(gpus=gpus, memory_bytes=math.inf, bandwidth_gbps=math.inf)
    found = solve_exact(graph, settings)
    assert found.optimal
    assert math.isclose(found.bottleneck_ms / 1e3, optimum_s, rel_tol=1e-6)


@SHARED
def test_vpipe_plan_proves_inception_v3_at_16_stages(tmp_path, capsys):
    """The whole command, as a user runs it: 0.046081 s per mini-batch (BASELINES.md), proven."""
    profile = tmp_path / "inception_v3.yaml"
    save_profile(import_pipedream(PIPEDREAM / "inception_v3.graph.txt"), profile)
    start = time.perf_counter()
    assert main([str(profile), *straight(16), "-o", str(tmp_path / "plan.yaml")]) == 0
    seconds = time.perf_counter() - start
    out = capsys.readouterr().out
    plan = load_plan(tmp_path / "plan.yaml")
    slowest = max(stage.predicted.time_ms for stage in plan.stages)
    assert math.isclose(slowest / 1e3, 0.046081, rel_tol=1e-6)
    assert math.isclose(plan.predicted.time_per_minibatch_ms / 1e3, 0.046081, rel_tol=1e-6)
    assert plan.solver.optimal and "proven optimal (" in out and "gap 0%" in out
    assert seconds < 60, f"{seconds:.1f} s"  # about 2 s on 2 cores; a hang would show here
