"""Why no plan fits: the stage that overflows even with everything recomputed, and what helps."""

from __future__ import annotations

import dataclasses
import math

from vpipe.common.units import human_bytes
from vpipe.planner.costmodel import evaluate_stage
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import PlanGraph
from vpipe.planner.schema import PlanSettings


def explain_infeasible(graph: PlanGraph, settings: PlanSettings) -> str:
    """One line: the stage of the fastest unconstrained split furthest over the limit, with its
    memory without recompute and with every node recomputed, and what would help."""
    free = solve_dp(graph, dataclasses.replace(settings, memory_bytes=math.inf))
    if not free.feasible:  # not memory: the graph has too few places to cut
        return (
            f"the model cannot be cut into {settings.gpus} stages: nodes that must share a stage "
            "(values that are not one tensor, such as sizes, tie their producer, readers and "
            "everything between to one stage) leave fewer places to cut; use fewer --gpus, or "
            "see docs/model-file.md on sizes"
        )
    before: list[int] = []
    worst = None
    for index, stage in enumerate(free.stages):
        plain = evaluate_stage(graph, settings, index, before, stage, ()).memory
        full = evaluate_stage(graph, settings, index, before, stage, stage).memory
        least = plain.total if settings.recompute == "never" else min(plain.total, full.total)
        if worst is None or least > worst[1]:
            worst = (index, least, plain, full)
        before += stage
    assert worst is not None
    index, least, plain, full = worst
    weights = plain.params + plain.stash + plain.grads + plain.optimizer
    helps = ["more --gpus", "a smaller batch (re-profile with --batch-size)"]
    if settings.recompute == "never":
        helps.insert(0, "--recompute auto")
    if settings.schedule == "asp":
        helps.append("--schedule 1f1b (one weight version, fewer micro-batches in flight)")
    recomputed = (
        f" and {human_bytes(full.total)} with every node recomputed"
        if settings.recompute != "never"
        else " (--recompute never)"
    )
    return (
        f"no plan fits {human_bytes(settings.memory_bytes)} per device (after "
        f"{settings.headroom:.0%} headroom): in the fastest split, stage {index} of "
        f"{settings.gpus} needs {human_bytes(plain.total)} without recompute{recomputed} "
        f"({human_bytes(least - settings.memory_bytes)} over; weights, stashed versions, "
        f"gradients and optimizer state alone are {human_bytes(weights)}); try "
        f"{', '.join(helps)}, or more --memory"
    )
