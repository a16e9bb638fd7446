"""The splits users make today, costed with vpipe's model so the plan can show its gain.

- uniform: equal node counts per stage (torchgpipe's and DeepSpeed's `uniform`);
- parameter-balanced: the least possible largest stage parameter count (DeepSpeed's default
  `parameters` method).
Both cut the profile's topological order into contiguous runs and recompute nothing.
"""

from __future__ import annotations

from vpipe.planner.graph import PlanGraph
from vpipe.planner.predict import predict_pipeline, predict_stages
from vpipe.planner.schema import Baseline, PlanSettings


def uniform_split(size: int, parts: int) -> list[list[int]]:
    bounds = [round(k * size / parts) for k in range(parts + 1)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]


def parameter_balanced_split(weights: list[int], parts: int) -> list[list[int]]:
    """Contiguous parts minimising the heaviest part: binary search on the cap, greedy fill."""

    def cuts_for(cap: int) -> list[int] | None:
        cuts, total = [0], 0
        for i, w in enumerate(weights):
            if total + w > cap and total > 0:
                cuts.append(i)
                total = 0
            total += w
        return cuts if len(cuts) <= parts else None

    low, high = max(weights, default=0), sum(weights)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if cuts_for(middle) else (middle + 1, high)
    cuts = cuts_for(low) or [0]
    # split the largest parts further (by node count) until there are exactly `parts`
    bounds = [*cuts, len(weights)]
    while len(bounds) - 1 < parts:
        widest = max(range(len(bounds) - 1), key=lambda k: bounds[k + 1] - bounds[k])
        bounds.insert(widest + 1, (bounds[widest] + bounds[widest + 1]) // 2)
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]


BASELINE_SPLITS = ("uniform", "parameter-balanced")
BASELINE_RULE = "baseline rule"  # the `cuts` a plan made by --split <rule> records


def baseline_split(graph: PlanGraph, name: str, parts: int) -> list[list[int]]:
    """The split rule `name` makes, each cut moved later past any value that is not one tensor
    (a tuple stays on one stage with its readers, as vpipe's own splits keep it)."""
    if name == "uniform":
        stages = uniform_split(graph.size, parts)
    else:
        stages = parameter_balanced_split(list(graph.param_bytes), parts)
    bounds = [0]
    for stage in stages[:-1]:
        bound = max(stage[-1] + 1 if stage else 0, bounds[-1])
        while bound < graph.size and graph.splits_a_group((1 << bound) - 1):
            bound += 1
        bounds.append(bound)
    bounds.append(graph.size)
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:], strict=False)]


def baselines(graph: PlanGraph, settings: PlanSettings, batch_size: int | None) -> list[Baseline]:
    if graph.size < settings.gpus:
        return []
    found = []
    for name in BASELINE_SPLITS:
        stages = baseline_split(graph, name, settings.gpus)
        if any(not stage for stage in stages):
            continue
        none: list[list[int]] = [[] for _ in stages]
        predictions = predict_stages(graph, settings, stages, none)
        pipeline = predict_pipeline(graph, settings, batch_size, stages, predictions)
        found.append(
            Baseline(
                name=name,
                stage_sizes=tuple(sum(n != graph.loss for n in s) for s in stages),  # model nodes
                time_per_minibatch_ms=pipeline.time_per_minibatch_ms,
                fits=all(p.memory.total <= settings.memory_bytes for p in predictions),
            )
        )
    return found
