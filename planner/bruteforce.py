"""Brute force over every cut chain and every recompute set: the oracle for small graphs.

Exponential on purpose; the tests compare the exact solvers with it on graphs of <= 10 nodes.
"""

from __future__ import annotations

import itertools

from vpipe.planner.costmodel import evaluate_stage
from vpipe.planner.cuts import members
from vpipe.planner.graph import PlanGraph
from vpipe.planner.schema import PlanSettings
from vpipe.planner.split import Split


def best_stage(
    graph: PlanGraph, settings: PlanSettings, index: int, before: int, stage: list[int]
) -> tuple[float, tuple[int, ...]] | None:
    """Fastest recompute set of one stage that fits memory, trying every subset."""
    best = None
    candidates = [n for n in stage if n not in graph.never_recomputed]
    for size in range(len(candidates) + 1):
        for chosen in itertools.combinations(candidates, size):
            predicted = evaluate_stage(graph, settings, index, members(before), stage, chosen)
            if predicted.memory.total > settings.memory_bytes:
                continue
            if best is None or predicted.time_ms < best[0]:
                best = (predicted.time_ms, chosen)
    return best


def solve_brute_force(graph: PlanGraph, settings: PlanSettings) -> Split:
    assert graph.size <= 14, "brute force is for small graphs"
    # every down-closed subset, found the naive way (independent of planner.cuts)
    ideals = [
        m
        for m in range(1 << graph.size)
        if all(not m >> n & 1 or all(m >> p & 1 for p in graph.preds[n]) for n in range(graph.size))
        and not graph.splits_a_group(m)
    ]
    full = (1 << graph.size) - 1
    inner = [m for m in ideals if m not in (0, full)]
    best: Split = Split(solver="brute", feasible=False, optimal=True)
    for cuts in itertools.combinations(inner, settings.gpus - 1):
        chain = (0, *cuts, full)
        if any(a & ~b or a == b for a, b in itertools.pairwise(chain)):
            continue
        stages, recompute, times = [], [], []
        for index, (before, upto) in enumerate(itertools.pairwise(chain)):
            stage = members(upto & ~before)
            found = best_stage(graph, settings, index, before, stage)
            if found is None:
                break
            times.append(found[0])
            stages.append(tuple(stage))
            recompute.append(found[1])
        else:
            worst = max(times)
            if worst < best.bottleneck_ms:
                best = Split(
                    solver="brute",
                    feasible=True,
                    stages=tuple(stages),
                    recompute=tuple(recompute),
                    bottleneck_ms=worst,
                    optimal=True,
                    lower_bound_ms=worst,
                    stage_ms=tuple(times),
                )
    return best
