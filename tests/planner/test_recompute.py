"""The recompute program against brute force over every subset of a stage's nodes."""

import itertools
import math
import random

import pytest

from vpipe.planner.costmodel import kept_bytes
from vpipe.planner.graph import plan_graph
from vpipe.planner.recompute import MemoryRoom, cheapest_recompute

from .randomgraphs import random_profile


def brute(graph, stage, budget):
    """Every subset of the stage's nodes but the model inputs (read from the batch, they have
    nothing to recompute)."""
    best = None
    candidates = [n for n in stage if n not in graph.never_recomputed]
    for size in range(len(candidates) + 1):
        for chosen in itertools.combinations(candidates, size):
            kept, transient = kept_bytes(graph, stage, chosen)
            if budget.in_flight * kept + transient > budget.room:
                continue
            added = sum(graph.fwd_ms[n] for n in chosen)
            if best is None or added < best:
                best = added
    return best


@pytest.mark.parametrize("seed", range(300))
def test_matches_brute_force(seed):
    rng = random.Random(seed)
    graph = plan_graph(random_profile(seed, rng.randint(2, 10)))
    start = rng.randint(0, graph.size - 1)
    stage = list(range(start, rng.randint(start + 1, graph.size)))
    full_kept, full_transient = kept_bytes(graph, stage, ())
    in_flight = rng.choice([1, 2, 3])
    budget = MemoryRoom(
        room=rng.uniform(0, 1.2) * (in_flight * full_kept + full_transient), in_flight=in_flight
    )
    expected = brute(graph, stage, budget)
    found = cheapest_recompute(graph, stage, budget)
    assert found.exact
    if expected is None:
        assert found.chosen is None
        return
    chosen, added = found.chosen, found.added_ms
    assert found.exact
    assert math.isclose(added, expected)
    kept, transient = kept_bytes(graph, stage, chosen)
    assert in_flight * kept + transient <= budget.room
