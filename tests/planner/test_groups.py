"""A value that is not one tensor keeps its producer and readers on one stage, and so every node
on a path between them (a shape read before an attention and used after it)."""

from __future__ import annotations

import pytest

from vpipe.planner.bruteforce import solve_brute_force
from vpipe.planner.cuts import all_ideals
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import plan_graph
from vpipe.planner.ilp import solve_ilp
from vpipe.planner.schema import PlanSettings

from .handmade import node, profile

# x -> q -> reshape(q, size(x)) -> attention -> reshape(., size(x)) -> head
PROFILE = profile(
    ("head",),
    (
        node("x", (), 128, fwd=0.0),
        node("size", ("x",), 0, fwd=0.0),  # an int tuple: cannot travel between stages
        node("q", ("x",), 128, fwd=1.0),
        node("split", ("q", "size"), 128, fwd=0.1),
        node("attention", ("split",), 128, fwd=3.0),
        node("merge", ("attention", "size"), 128, fwd=0.1),
        node("head", ("merge",), 128, fwd=1.0),
    ),
)


def test_a_node_between_a_groups_members_joins_the_group():
    graph = plan_graph(PROFILE)
    index = {name: i for i, name in enumerate(graph.names)}
    assert graph.together == (tuple(index[n] for n in ("size", "split", "attention", "merge")),)
    assert all_ideals(graph, 1000)[-1] == (1 << graph.size) - 1  # the cuts reach the whole graph


@pytest.mark.parametrize("gpus", [2, 3])
def test_every_solver_places_every_node(gpus):
    graph = plan_graph(PROFILE)
    settings = PlanSettings(gpus=gpus, memory_bytes=float("inf"), bandwidth_gbps=float("inf"))
    oracle = solve_brute_force(graph, settings)
    for split in (solve_dp(graph, settings), solve_ilp(graph, settings)):
        assert sorted(n for stage in split.stages for n in stage) == list(range(graph.size))
        assert split.bottleneck_ms == pytest.approx(oracle.bottleneck_ms)
