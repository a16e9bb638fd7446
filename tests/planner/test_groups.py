"""A value that is not one tensor keeps its producer and readers on one stage, and so every node
on a path between them (a shape read before an attention and used after it)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vpipe.common.errors import VpipeError
from vpipe.planner.bruteforce import solve_brute_force
from vpipe.planner.cuts import all_ideals
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import plan_graph
from vpipe.planner.ilp import solve_ilp
from vpipe.planner.planning import make_plan
from vpipe.planner.schema import PlanSettings
from vpipe.profiler.schema import LOSS_NODE

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


# two shapes, each read on one branch and used on the other: each group feeds the other
CROSSED = profile(
    ("head",),
    (
        node("x", (), 128, fwd=0.0),
        node("s1", ("x",), 0, fwd=0.0),
        node("s2", ("x",), 0, fwd=0.0),
        node("a", ("x",), 128),
        node("r1", ("a", "s1"), 128, fwd=0.1),
        node("l2", ("r1",), 128),
        node("r2", ("l2", "s2"), 128, fwd=0.1),
        node("twice", ("a",), 128, fwd=0.1),
        node("v2", ("twice", "s2"), 128, fwd=0.1),
        node("l3", ("v2",), 128),
        node("v1", ("l3", "s1"), 128, fwd=0.1),
        node("add", ("r2", "v1"), 128, fwd=0.1),
        node("head", ("add",), 128),
    ),
)


def test_groups_that_feed_each_other_are_one():
    graph = plan_graph(CROSSED)
    index = {name: i for i, name in enumerate(graph.names)}
    shared = ("s1", "s2", "r1", "l2", "r2", "v2", "l3", "v1")
    assert graph.together == (tuple(sorted(index[n] for n in shared)),)
    for gpus in (1, 2, 3):
        settings = PlanSettings(gpus=gpus, memory_bytes=float("inf"), bandwidth_gbps=float("inf"))
        split, oracle = solve_dp(graph, settings), solve_brute_force(graph, settings)
        assert sorted(n for stage in split.stages for n in stage) == list(range(graph.size))
        assert split.bottleneck_ms == pytest.approx(oracle.bottleneck_ms)


def test_the_loss_joins_the_last_output():
    # the model returns (features, logits): features come first and feed the rest
    early = profile(
        ("feat", "head"),
        (
            node("x", (), 128, fwd=0.0),
            node("feat", ("x",), 128),
            node("body", ("feat",), 128, fwd=3.0),
            node("head", ("body",), 128),
        ),
    )
    loss = replace(early.nodes[-1], name=LOSS_NODE, op="loss", inputs=("feat", "head"))
    graph = plan_graph(replace(early, loss=loss))
    index = {name: i for i, name in enumerate(graph.names)}
    assert graph.together == ((index["head"], index[LOSS_NODE]),)
    settings = PlanSettings(gpus=3, memory_bytes=float("inf"), bandwidth_gbps=float("inf"))
    split = solve_dp(graph, settings)
    assert [len(stage) for stage in split.stages] == [2, 1, 2]  # x feat | body | head loss


def test_more_stages_than_places_to_cut_is_a_clear_error():
    # x | a | twice | the crossed group | add | head: six units, so no 7-stage split
    settings = PlanSettings(gpus=7, memory_bytes=float("inf"), bandwidth_gbps=float("inf"))
    with pytest.raises(VpipeError, match="cannot be cut into 7 stages"):
        make_plan(CROSSED, "crossed.yaml", "0" * 64, settings)


def test_an_output_that_is_not_one_tensor_stays_with_the_loss():
    """The model returns a value that is not one tensor (a tuple): the loss, which reads it,
    joins its node (the union-find once had no place for the loss and raised IndexError)."""
    pair = profile(
        ("pair",),
        (
            node("x", (), 128, fwd=0.0),
            node("body", ("x",), 128, fwd=3.0),
            replace(node("pair", ("body",), 128), is_tensor=False),
        ),
    )
    loss = replace(pair.nodes[-1], name=LOSS_NODE, op="loss", inputs=("pair",), is_tensor=True)
    graph = plan_graph(replace(pair, loss=loss))
    index = {name: i for i, name in enumerate(graph.names)}
    assert graph.together == ((index["pair"], index[LOSS_NODE]),)
