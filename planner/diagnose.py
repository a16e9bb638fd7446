"""Why no plan fits: the stage that overflows even with everything recomputed, and what helps."""

from __future__ import annotations

import dataclasses
import math

from vpipe.planner.costmodel import evaluate_stage
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import PlanGraph
from vpipe.planner.schema import PlanSettings

GIB = 2**30


def explain_infeasible(graph: PlanGraph, settings: PlanSettings) -> str:
    """One line: which stage of the fastest unconstrained split cannot fit, by how much."""
    free = solve_dp(graph, dataclasses.replace(settings, memory_bytes=math.inf))
    before: list[int] = []
    worst = None
    for index, stage in enumerate(free.stages):
        least = evaluate_stage(graph, settings, index, before, stage, stage).memory
        if worst is None or least.total > worst[1].total:
            worst = (index, least)
        before += stage
    assert worst is not None
    index, least = worst
    over = least.total - settings.memory_bytes
    weights = least.params + least.stash + least.grads + least.optimizer
    helps = ["more --gpus", "a smaller batch (re-profile with --batch-size)"]
    if settings.schedule == "asp":
        helps.append("--schedule 1f1b (one weight version, fewer mini-batches in flight)")
    return (
        f"no plan fits {settings.memory_bytes / GIB:.2f} GiB per device (after "
        f"{settings.headroom:.0%} headroom): stage {index} of {settings.gpus} needs at least "
        f"{least.total / GIB:.2f} GiB even with every node recomputed ({over / GIB:.2f} GiB over; "
        f"weights, stashed versions, gradients and optimizer state alone are "
        f"{weights / GIB:.2f} GiB); try {', '.join(helps)}, or more --memory"
    )
