"""The hybrid search (stages x data-parallel replicas) against brute force on random small
graphs, against hand-computed figures, and against the straight planner where no replica can
help."""

import dataclasses
import math

import pytest

from vpipe.common.schedules import in_flight_limit, replica_in_flight, weight_versions
from vpipe.planner.bruteforce import solve_brute_force
from vpipe.planner.costmodel import PIPEDREAM_ALLREDUCE, RING, evaluate_replicated_stage
from vpipe.planner.graph import plan_graph
from vpipe.planner.hybrid import solve_hybrid
from vpipe.planner.schema import PlanSettings
from vpipe.profiler.schema import LinkCost

from .bruteforce_hybrid import solve_hybrid_brute_force
from .handmade import node
from .handmade import profile as handmade_profile
from .randomgraphs import TIED_SEEDS, random_case

SEEDS = [*range(60), *TIED_SEEDS[:5]]


def _case(seed: int) -> tuple:
    graph, settings = random_case(seed)
    gpus = min(4, max(settings.gpus, 2))
    return graph, dataclasses.replace(settings, gpus=gpus)


@pytest.mark.parametrize("seed", SEEDS)
def test_the_hybrid_search_reaches_brute_force_and_states_the_models_figures(seed):
    graph, settings = _case(seed)
    model = PIPEDREAM_ALLREDUCE if seed % 2 else RING
    expected = solve_hybrid_brute_force(graph, settings, model=model)
    found = solve_hybrid(graph, settings, model=model)
    assert found.feasible == math.isfinite(expected.bottleneck_ms)
    if not found.feasible:
        return
    assert found.optimal and found.lower_bound_ms == found.bottleneck_ms
    assert found.bottleneck_ms == pytest.approx(expected.bottleneck_ms, rel=1e-9)
    # the tables' bottleneck is the cost model's for the split they chose, which fits
    assert max(p.time_ms for p in found.predicted) == pytest.approx(found.bottleneck_ms, rel=1e-9)
    assert all(p.memory.total <= settings.memory_bytes for p in found.predicted)
    assert found.processes <= settings.gpus
    assert sorted(n for stage in found.stages for n in stage) == list(range(graph.size))


@pytest.mark.parametrize("seed", SEEDS[::3])
def test_pinned_stage_counts_reach_brute_force(seed):
    graph, settings = _case(seed)
    for stages in range(1, min(settings.gpus, graph.size) + 1):
        expected = solve_hybrid_brute_force(graph, settings, stages=stages)
        found = solve_hybrid(graph, settings, stages=stages)
        assert found.bottleneck_ms == pytest.approx(expected.bottleneck_ms, rel=1e-9)
        if found.feasible:
            assert len(found.stages) == stages


@pytest.mark.parametrize("seed", SEEDS[::4])
def test_as_many_stages_as_processes_is_the_straight_pipeline(seed):
    """With S stages on S processes no stage can be replicated: the straight planner's optimum
    (without a memory cap, where recompute cannot help)."""
    graph, settings = _case(seed)
    gpus = min(settings.gpus, graph.size)
    settings = dataclasses.replace(settings, gpus=gpus, memory_bytes=math.inf)
    straight = solve_brute_force(graph, settings)
    found = solve_hybrid(graph, settings, stages=settings.gpus)
    assert found.feasible == straight.feasible
    if found.feasible:
        assert found.replicas == (1,) * settings.gpus
        assert found.bottleneck_ms == pytest.approx(straight.bottleneck_ms, rel=1e-9)


def test_a_replicated_stage_by_hand():
    """One layer of 3 ms with 1 MB of weights on 4 processes at 1 GB/s (1 MB: 1 ms one way):
    r replicas take (3 + 2 (r - 1) / r x 1) / r ms a micro-batch with a ring all-reduce,
    (3 + 4 (r - 1) / r) / r with PipeDream's term. Best: 4 replicas, 0.9375 and 1.125 ms."""
    layer = node("n1", ("n0",), 4, params=1_000_000, fwd=1.0)
    profile = handmade_profile(("n1",), (node("n0", (), 4), layer))
    graph = plan_graph(profile)
    settings = PlanSettings(gpus=4, memory_bytes=math.inf, bandwidth_gbps=1.0)
    ring = solve_hybrid(graph, settings, stages=1)
    assert ring.replicas == (4,)
    assert ring.bottleneck_ms == pytest.approx((3 + 2 * 3 / 4) / 4)
    assert ring.predicted[0].allreduce_ms == pytest.approx(1.5)
    # its gradient, and the buffer the all-reduce lays the gradients out in
    assert ring.predicted[0].memory.grads == 2 * 1_000_000
    theirs = solve_hybrid(graph, settings, stages=1, model=PIPEDREAM_ALLREDUCE)
    assert theirs.bottleneck_ms == pytest.approx((3 + 4 * 3 / 4) / 4)


@pytest.mark.parametrize("schedule", ["asp", "1f1b", "gpipe"])
def test_one_replica_keeps_the_straight_pipelines_in_flight_rule(schedule):
    for stages in range(1, 6):
        for stage in range(stages):
            for microbatches in (1, 2, 4, 8):
                assert replica_in_flight(schedule, microbatches, 1, stages - stage) == (
                    in_flight_limit(schedule, stages, microbatches, stage)
                )
            assert weight_versions(schedule, stages, stage) >= 1


def test_replicas_share_what_is_in_flight():
    """Stages of 2 + 1 replicas under asp (PipeDream's input stage admits ceil(3 / 2)): each
    replica of the first holds 2 micro-batches, the last stage's 1."""
    assert replica_in_flight("asp", 1, 2, 3) == 2
    assert replica_in_flight("asp", 1, 1, 1) == 1
    assert replica_in_flight("1f1b", 4, 2, 3) == 2
    assert replica_in_flight("gpipe", 5, 2, 3) == 3


def test_the_synchronous_schedules_all_reduce_once_per_step():
    """1f1b, 8 micro-batches a step, 4 replicas: each runs 2 and all-reduces once (1.5 ms, as
    above), so half an all-reduce per micro-batch it runs: (3 + 0.75) / 4 ms."""
    layer = node("n1", ("n0",), 4, params=1_000_000, fwd=1.0)
    graph = plan_graph(handmade_profile(("n1",), (node("n0", (), 4), layer)), schedule="1f1b")
    settings = PlanSettings(
        gpus=4, memory_bytes=math.inf, bandwidth_gbps=1.0, schedule="1f1b", microbatches=8
    )
    found = evaluate_replicated_stage(graph, settings, (0, True), [], [0, 1], 4, 4)
    assert found.allreduce_ms == pytest.approx(1.5)
    assert found.time_ms == pytest.approx((3 + 0.75) / 4)


def test_on_a_cpu_the_all_reduce_costs_the_links_copies():
    """gloo copies on the cores that compute: 1 MiB of gradients, 1 ms per MiB each way, 2
    replicas: each sends and receives 2 (2 - 1) / 2 MiB, 2 ms of CPU, at infinite bandwidth."""
    layer = node("n1", ("n0",), 4, params=2**20, fwd=1.0)
    profile = handmade_profile(("n1",), (node("n0", (), 4), layer))
    graph = plan_graph(dataclasses.replace(profile, link=LinkCost("gloo", 0.0, 1.0)))
    settings = PlanSettings(gpus=2, memory_bytes=math.inf, bandwidth_gbps=math.inf)
    found = evaluate_replicated_stage(graph, settings, (0, True), [], [0, 1], 2, 2)
    assert found.allreduce_ms == pytest.approx(2.0)
    assert found.time_ms == pytest.approx((3 + 2) / 2)
