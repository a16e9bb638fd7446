"""Brute force over the cuts of small graphs, unit by unit: the references the tests of the exact
planner's parts (precedence, windows, mincut, cutsearch, windowmip) compare with.

Every ideal (down-closed unit set) is found by trying all 2^U subsets, and every split is a
chain of them; nothing here calls the planner's own search code. Sets are integer bitmasks over
units (bit k: unit k).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import random
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from vpipe.planner.graph import PlanGraph, plan_graph
from vpipe.planner.precedence import Units, units_of
from vpipe.profiler.schema import Profile

from .randomgraphs import random_profile


def branchy_profile(seed: int, size: int) -> Profile:
    """`random_profile` rewired into a branchy DAG. (Its own graphs always have the edge
    n(i-1) -> n(i), so their ideals are only prefixes.) Each node reads 0-2 earlier nodes, so
    there are several sources and sinks, and about one value in four is not one tensor, so its
    producer and readers must share a stage (`PlanGraph.together`)."""
    base = random_profile(seed, size)
    rng = random.Random(seed + 7 * 10**6)
    nodes = [base.nodes[0]]
    for i, node in enumerate(base.nodes[1:], start=1):
        count = rng.choice([0, 1, 1, 2, 2]) if i > 1 else 1
        inputs = tuple(sorted(rng.sample([f"n{j}" for j in range(i)], min(i, count)), key=_index))
        nodes.append(
            dataclasses.replace(
                node,
                inputs=inputs,
                saved_inputs=tuple(p for p in inputs if rng.random() < 0.5),
                view_of=node.view_of if node.view_of in inputs else "",
                is_tensor=rng.random() >= 0.25,
            )
        )
    read = {p for node in nodes for p in node.inputs}
    sinks = [node.name for node in nodes[:-1] if node.name not in read and rng.random() < 0.5]
    return dataclasses.replace(base, nodes=tuple(nodes), outputs=(*sinks, nodes[-1].name))


def _index(name: str) -> int:
    return int(name[1:])


def small_profile(seed: int, max_size: int = 9) -> Profile:
    """A profile of 3..max_size nodes: one seed in four a `random_profile` (a chain with
    skips), the rest `branchy_profile`."""
    size = random.Random(seed).randint(3, max_size)
    return random_profile(seed, size) if seed % 4 == 0 else branchy_profile(seed, size)


def small_graph(seed: int, max_size: int = 9) -> PlanGraph:
    return plan_graph(small_profile(seed, max_size))


@functools.cache
def small_case(seed: int, max_size: int = 9, max_stages: int = 4) -> tuple[PlanGraph, Units, int]:
    """A small graph, its units and a number of stages (2..max_stages, fewer when the units
    are fewer). Cached: several test modules ask for the same cases (the planner reads them
    and never changes them)."""
    graph = small_graph(seed, max_size)
    units = units_of(graph)
    stages = min(units.size, random.Random(seed + 1).randint(2, max_stages))
    return graph, units, stages


@functools.cache
def unit_ideals(units: Units) -> list[int]:
    """Every down-closed set of units (the empty set and all units included), by trying every
    subset: sorted by size, then value (cached per units: do not change the list)."""
    preds = [sum(1 << p for p in units.preds[u]) for u in range(units.size)]
    found = [
        mask
        for mask in range(1 << units.size)
        if all(not mask >> u & 1 or preds[u] & ~mask == 0 for u in range(units.size))
    ]
    return sorted(found, key=lambda m: (m.bit_count(), m))


def mask_of(flags: Iterable[bool] | np.ndarray) -> int:
    """A bool vector over units as a bitmask."""
    return sum(1 << k for k, flag in enumerate(flags) if flag)


def flags_of(mask: int, size: int) -> list[bool]:
    return [bool(mask >> k & 1) for k in range(size)]


def members(mask: int) -> list[int]:
    return [k for k in range(mask.bit_length()) if mask >> k & 1]


@functools.cache
def mask_work(units: Units, mask: int) -> float:
    """The work of a set of units (cached: the brute forces ask for the same sets often)."""
    return sum(float(units.work[k]) for k in members(mask))


def splits(units: Units, stages: int, cap: float = math.inf) -> Iterator[tuple[int, ...]]:
    """Every split into `stages` non-empty stages whose work is each at most `cap` (relative
    tolerance 1e-9), as its chain of cuts (0, I_1, ..., all units)."""
    ideals = unit_ideals(units)
    work = {ideal: mask_work(units, ideal) for ideal in ideals}
    full = ideals[-1]
    limit = cap * (1 + 1e-9) + 1e-12

    def grow(chain: tuple[int, ...]) -> Iterator[tuple[int, ...]]:
        last = chain[-1]
        if len(chain) == stages:
            if last != full and work[full] - work[last] <= limit:
                yield (*chain, full)
            return
        for ideal in ideals:
            if ideal & last == last and ideal not in (last, full):
                if work[ideal] - work[last] <= limit:
                    yield from grow((*chain, ideal))

    yield from grow((0,))


def least_bottleneck(
    ideals: list[int], stages: int, cost: Callable[[int, int], float]
) -> tuple[float, tuple[int, ...] | None]:
    """The least slowest stage over every chain of `stages` non-empty stages through `ideals`
    (the empty set first, all units last), each stage costed by `cost(before, upto)`: the
    min-max recurrence over every pair of nested ideals. Returns (value, its chain)."""
    full = ideals[-1]
    best: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, (0,))}
    for _ in range(stages):
        grown: dict[int, tuple[float, tuple[int, ...]]] = {}
        for before, (value, chain) in best.items():
            for upto in ideals:
                if upto & before == before and upto != before:
                    total = max(value, cost(before, upto))
                    if upto not in grown or total < grown[upto][0]:
                        grown[upto] = (total, (*chain, upto))
        best = grown
    return best.get(full, (math.inf, None))


def stage_works(units: Units, chain: tuple[int, ...]) -> list[float]:
    """The work of each stage of a chain of cuts."""
    return [mask_work(units, b & ~a) for a, b in itertools.pairwise(chain)]


def least_work(units: Units, stages: int) -> float:
    """The least work of the slowest stage over every split into `stages`."""
    return least_bottleneck(unit_ideals(units), stages, lambda a, b: mask_work(units, b & ~a))[0]
