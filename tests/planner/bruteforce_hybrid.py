"""Brute force over every cut chain, every replica count per stage and every recompute set: the
hybrid search's oracle on small graphs (exponential on purpose)."""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

from vpipe.planner.costmodel import RING, AllReduce, evaluate_replicated_stage
from vpipe.planner.cuts import members
from vpipe.planner.graph import PlanGraph
from vpipe.planner.schema import PlanSettings


@dataclass(frozen=True)
class HybridOptimum:
    bottleneck_ms: float  # math.inf: nothing fits
    stages: tuple[tuple[int, ...], ...] = ()
    replicas: tuple[int, ...] = ()


def naive_ideals(graph: PlanGraph) -> list[int]:
    """Every down-closed node set that keeps `together` groups whole, found the slow way."""
    return [
        m
        for m in range(1 << graph.size)
        if all(not m >> n & 1 or all(m >> p & 1 for p in graph.preds[n]) for n in range(graph.size))
        and not graph.splits_a_group(m)
    ]


def solve_hybrid_brute_force(
    graph: PlanGraph, settings: PlanSettings, stages: int | None = None, model: AllReduce = RING
) -> HybridOptimum:
    full = (1 << graph.size) - 1
    inner = [m for m in naive_ideals(graph) if m not in (0, full)]
    best = HybridOptimum(math.inf)
    counts = [stages] if stages is not None else range(1, settings.gpus + 1)
    for count in counts:
        for cuts in itertools.combinations(inner, count - 1):
            chain = (0, *cuts, full)
            if any(a & ~b or a == b for a, b in itertools.pairwise(chain)):
                continue
            split = [tuple(members(b & ~a)) for a, b in itertools.pairwise(chain)]
            for replicas in itertools.product(range(1, settings.gpus + 1), repeat=count):
                if sum(replicas) > settings.gpus:
                    continue
                worst = _bottleneck(graph, settings, split, replicas, model)
                if worst < best.bottleneck_ms:
                    best = HybridOptimum(worst, tuple(split), tuple(replicas))
    return best


def _bottleneck(
    graph: PlanGraph,
    settings: PlanSettings,
    split: list[tuple[int, ...]],
    replicas: tuple[int, ...],
    model: AllReduce,
) -> float:
    worst, before = 0.0, []
    for index, (stage, r) in enumerate(zip(split, replicas, strict=True)):
        position = (index, index == len(split) - 1)
        worst = max(
            worst,
            _fastest(
                graph, settings, position, tuple(before), stage, r, sum(replicas[index:]), model
            ),
        )
        before.extend(stage)
    return worst


@functools.cache
def _fastest(
    graph: PlanGraph,
    settings: PlanSettings,
    position: tuple[int, bool],
    before: tuple[int, ...],
    stage: tuple[int, ...],
    replicas: int,
    workers: int,
    model: AllReduce,
) -> float:
    """The stage's least time over every recompute set that fits (inf: none does)."""
    candidates = [n for n in stage if n not in graph.never_recomputed]
    if settings.recompute == "never":
        candidates = []
    best = math.inf
    for size in range(len(candidates) + 1):
        for chosen in itertools.combinations(candidates, size):
            found = evaluate_replicated_stage(
                graph, settings, position, before, stage, replicas, workers, model, chosen
            )
            if found.memory.total <= settings.memory_bytes:
                best = min(best, found.time_ms)
    return best
