"""The dynamic program on cases that need more than the random graphs of test_agreement: what
a cut costs, and prefixes when the cuts are too many to enumerate."""

import dataclasses
import math

import pytest

from vpipe.planner.bruteforce import solve_brute_force
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import plan_graph
from vpipe.planner.schema import PlanSettings
from vpipe.profiler.schema import LinkCost, TensorMeta

from .handmade import node, profile


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
