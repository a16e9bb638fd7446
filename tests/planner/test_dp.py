"""The dynamic program against brute force over every cut chain and recompute set."""

import dataclasses
import math
import random

import pytest

from vpipe.planner.bruteforce import solve_brute_force
from vpipe.planner.costmodel import evaluate_stage
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import plan_graph
from vpipe.planner.schema import PlanSettings
from vpipe.profiler.schema import LinkCost, TensorMeta

from .handmade import node, profile
from .randomgraphs import random_profile

TIED_SEEDS = range(250, 330)  # cases whose graphs share parameters between nodes


def random_case(seed):
    """A small graph and settings; most memory caps sit just below what the unconstrained
    optimum needs, where recompute decides feasibility and speed. Seeds from 250 on share
    parameters between nodes (ties), so stages holding copies pay for them."""
    rng = random.Random(seed)
    graph = plan_graph(random_profile(seed, rng.randint(2, 9), ties=seed in TIED_SEEDS))
    settings = PlanSettings(
        gpus=rng.randint(1, min(4, graph.size)),
        memory_bytes=math.inf,
        bandwidth_gbps=rng.choice([math.inf, 0.001, 0.0002]),  # GB/s: bytes here are small
        schedule=rng.choice(["asp", "asp", "1f1b", "gpipe"]),
        microbatches=rng.choice([1, 2, 4]),
    )
    if rng.random() < 0.8:
        free = solve_dp(graph, settings)
        before: list[int] = []
        need = 0
        for index, stage in enumerate(free.stages):
            need = max(need, evaluate_stage(graph, settings, index, before, stage, ()).memory.total)
            before += stage
        settings = dataclasses.replace(settings, memory_bytes=need * rng.uniform(0.6, 1.0))
    return graph, settings


@pytest.mark.parametrize("seed", [*range(250), *TIED_SEEDS])
def test_dp_matches_brute_force(seed, monkeypatch):
    if seed % 5 == 0:  # backward peaks rounded down to 2 levels: the chain's stages are checked
        monkeypatch.setattr("vpipe.planner.dp.THRESHOLDS", 2)
    graph, settings = random_case(seed)
    expected = solve_brute_force(graph, settings)
    found = solve_dp(graph, settings)
    assert found.feasible == expected.feasible
    if not expected.feasible:
        return
    assert math.isclose(found.bottleneck_ms, expected.bottleneck_ms, rel_tol=1e-9)
    assert found.optimal
    # the split it returns really costs what it claims, stage by stage, and fits
    before: list[int] = []
    worst = 0.0
    for index, (stage, recompute) in enumerate(zip(found.stages, found.recompute, strict=True)):
        predicted = evaluate_stage(graph, settings, index, before, stage, recompute)
        assert predicted.memory.total <= settings.memory_bytes
        worst = max(worst, predicted.time_ms)
        before += stage
    assert math.isclose(worst, found.bottleneck_ms, rel_tol=1e-9)
    assert sorted(before) == list(range(graph.size))


def test_an_empty_input_tensor_is_not_glued_to_the_first_stage():
    """A zero-byte input is free to place unless it is a tensor: then every cut it crosses costs
    a message (the DP pinned it to stage 0 and missed the faster split)."""
    empty = dataclasses.replace(
        node("mask", (), 4, fwd=0.0), outputs=(TensorMeta((0,), "float32"),), output_bytes=0
    )
    nodes = (
        node("x", (), 4, fwd=0.0),
        empty,
        node("a", ("x",), 4, fwd=2.0),
        node("b", ("a",), 4, fwd=2.0),
        node("c", ("b", "mask"), 4, fwd=2.0),
    )
    profiled = dataclasses.replace(profile(("c",), nodes), link=LinkCost("gloo", 1.0, 0.0))
    graph = plan_graph(profiled)
    settings = PlanSettings(gpus=2, memory_bytes=math.inf, bandwidth_gbps=math.inf)
    assert solve_dp(graph, settings).bottleneck_ms == pytest.approx(
        solve_brute_force(graph, settings).bottleneck_ms
    )
