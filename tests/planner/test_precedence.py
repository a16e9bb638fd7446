"""precedence.units_of against references computed here from the profile: units are exactly the
node sets that must share a stage (mutual reachability over the edges and the cycles that
values which are not one tensor close between producer and readers, found by Warshall's
closure), numbered topologically, with the unit graph's edges, closure and work it promises;
and one hand-worked graph."""

from __future__ import annotations

import numpy as np
import pytest

from vpipe.planner.graph import plan_graph
from vpipe.planner.precedence import Units, units_of

from .bruteforce_cuts import small_profile
from .handmade import node, profile
from .randomgraphs import random_profile

SEEDS = range(40)


def reachable(size: int, edges: set[tuple[int, int]]) -> np.ndarray:
    """[u, v]: v is reachable from u (u itself included): Warshall's closure."""
    reach = np.eye(size, dtype=bool)
    for u, v in edges:
        reach[u, v] = True
    for k in range(size):
        reach |= reach[:, k : k + 1] & reach[k : k + 1, :]
    return reach


def unit_of(units: Units, size: int) -> list[int]:
    owner = [-1] * size
    for k, members in enumerate(units.members):
        for n in members:
            owner[n] = k
    return owner


@pytest.mark.parametrize("seed", SEEDS)
def test_units_are_the_node_sets_that_must_share_a_stage(seed: int) -> None:
    profile = small_profile(seed)
    graph = plan_graph(profile)
    units = units_of(graph)
    assert sorted(n for members in units.members for n in members) == list(range(graph.size))
    assert all(list(members) == sorted(members) for members in units.members)
    owner = unit_of(units, graph.size)
    assert all(len({owner[n] for n in group}) == 1 for group in graph.together)
    # the reference: a value that is not one tensor puts its producer and each reader on one
    # stage (a cycle between them); edges put a reader on its producer's stage or later; so two
    # nodes share a stage in every split iff each reaches the other
    index = {entry.name: i for i, entry in enumerate(profile.nodes)}
    edges = {(index[p], i) for i, entry in enumerate(profile.nodes) for p in entry.inputs}
    for i, entry in enumerate(profile.nodes):
        if entry.op != "placeholder" and (not entry.is_tensor or len(entry.outputs) != 1):
            edges |= {(r, i) for r in range(graph.size) if i in graph.preds[r]}
    reach = reachable(graph.size, edges)
    together = reach & reach.T
    same = np.array([[owner[u] == owner[v] for v in range(graph.size)] for u in range(graph.size)])
    assert (same == together).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_units_form_a_dag_in_topological_order_with_its_closure(seed: int) -> None:
    graph = plan_graph(small_profile(seed))
    units = units_of(graph)
    owner = unit_of(units, graph.size)
    crossing = {
        (owner[u], owner[v])
        for u in range(graph.size)
        for v in graph.succs[u]
        if owner[u] != owner[v]
    }
    assert all(a < b for a, b in crossing)  # numbered topologically: the unit graph is a DAG
    assert {(p, v) for v in range(units.size) for p in units.preds[v]} == crossing
    assert {(v, s) for v in range(units.size) for s in units.succs[v]} == crossing
    reach = reachable(units.size, crossing)  # [u, v]: u precedes v (or is v)
    assert (units.ancestors == reach.T).all()
    assert (units.descendants == reach).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_unit_work_is_its_nodes_compute(seed: int) -> None:
    graph = plan_graph(small_profile(seed))
    units = units_of(graph)
    for k, members in enumerate(units.members):
        assert units.work[k] == pytest.approx(sum(graph.compute_ms(n) for n in members))
    total = sum(graph.compute_ms(n) for n in range(graph.size))
    assert units.work.sum() == pytest.approx(total)
    later_first = list(range(units.size))[::-1]
    assert units.nodes(later_first) == tuple(range(graph.size))
    rest = tuple(sorted(set(range(graph.size)) - set(units.members[0])))
    assert units.nodes(later_first[:-1]) == rest


@pytest.mark.parametrize("seed", range(0, 40, 4))
def test_without_groups_units_are_the_nodes_in_the_profiles_order(seed: int) -> None:
    graph = plan_graph(random_profile(seed, 9))
    assert graph.together == ()
    units = units_of(graph)
    assert units.members == tuple((n,) for n in range(graph.size))
    assert units.preds == graph.preds and units.succs == graph.succs


# a -> b (not a tensor: b shares d's stage), a -> c -> d -> e: the group (b, d) reads c
BRANCHES = profile(
    ("e",),
    (
        node("a", (), 128),
        node("b", ("a",), 0, fwd=0.0),
        node("c", ("a",), 128, fwd=1.0),
        node("d", ("b", "c"), 128, fwd=2.0),
        node("e", ("d",), 128, fwd=1.0),
    ),
)


def test_a_group_is_one_unit_after_the_nodes_it_reads() -> None:
    """The group (b, d) reads c, so c's unit comes first although b precedes c in the
    profile's order."""
    graph = plan_graph(BRANCHES)
    assert graph.together == ((1, 3),)
    units = units_of(graph)
    assert units.members == ((0,), (2,), (1, 3), (4,))
    assert units.preds == ((), (0,), (0, 1), (2,))
    assert units.succs == ((1, 2), (2,), (3,), ())
    assert units.work == pytest.approx([0.0, 3.0, 6.0, 3.0])  # fwd + 2 x fwd; a input is free
    assert units.ancestors[3].all() and units.descendants[0].all()
    assert not units.ancestors[1, 2] and units.ancestors[2, 1]
    assert units.descendants[1].tolist() == [False, True, True, True]
