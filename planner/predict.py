"""From a split (stages and their recompute sets) to the predicted figures a plan states."""

from __future__ import annotations

from collections.abc import Sequence

from vpipe.planner.costmodel import crossing_bytes, evaluate_stage
from vpipe.planner.graph import PlanGraph
from vpipe.planner.schema import PlanSettings, Prediction, StagePrediction
from vpipe.planner.simulate import simulate


def predict_stages(
    graph: PlanGraph,
    settings: PlanSettings,
    stages: Sequence[Sequence[int]],
    recompute: Sequence[Sequence[int]],
) -> list[StagePrediction]:
    before: list[int] = []
    predictions = []
    for index, (stage, chosen) in enumerate(zip(stages, recompute, strict=True)):
        predictions.append(evaluate_stage(graph, settings, index, before, stage, chosen))
        before += stage
    return predictions


def predict_pipeline(
    graph: PlanGraph,
    settings: PlanSettings,
    batch_size: int | None,
    stages: Sequence[Sequence[int]],
    predictions: Sequence[StagePrediction],
) -> Prediction:
    """Time per mini-batch: the slowest stage under asp (steady state, no bubble; a mini-batch
    is one profiled batch); the simulated iteration over M micro-batches of the profiled batch
    size, bubbles included, under the synchronous schedules."""
    bottleneck = max(range(len(predictions)), key=lambda s: predictions[s].time_ms)
    if settings.schedule == "asp":
        minibatch_ms, bubble = predictions[bottleneck].time_ms, 0.0
    else:
        timeline = simulate_plan(graph, settings, stages, predictions)
        minibatch_ms, bubble = timeline.makespan_ms, timeline.bubble_fraction
    samples = (batch_size or 1) * (1 if settings.schedule == "asp" else settings.microbatches)
    return Prediction(
        time_per_minibatch_ms=minibatch_ms,
        throughput_samples_per_s=samples / (minibatch_ms / 1e3) if minibatch_ms else 0.0,
        bottleneck_stage=bottleneck,
        bubble_fraction=bubble,
    )


def simulate_plan(
    graph: PlanGraph,
    settings: PlanSettings,
    stages: Sequence[Sequence[int]],
    predictions: Sequence[StagePrediction],
):
    """The synchronous schedule's timeline for these stages, one micro-batch per action."""
    # a forward sends activations and takes gradients' receives ahead: half the transfers' work
    forward = [
        sum(graph.fwd_ms[n] for n in stage) + p.transfer_ms / 2
        for stage, p in zip(stages, predictions, strict=True)
    ]
    backward = [p.compute_ms - f for p, f in zip(predictions, forward, strict=True)]
    transfer = []
    before: list[int] = []
    for stage in stages[:-1]:
        before += stage
        transfer.append(crossing_bytes(graph, before) / (settings.bandwidth_gbps * 1e6))
    return simulate(settings.schedule, settings.microbatches, forward, backward, transfer)
