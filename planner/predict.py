"""From a split (stages and their recompute sets) to the predicted figures a plan states."""

from __future__ import annotations

from collections.abc import Sequence

from vpipe.planner import jitter
from vpipe.planner.costmodel import evaluate_stage
from vpipe.planner.graph import PlanGraph
from vpipe.planner.schema import PlanSettings, Prediction, StagePrediction
from vpipe.planner.simulate import asp_period_ms, simulate
from vpipe.planner.waiting import cut_delays


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
    """Time per mini-batch, what each stage waits for included (`planner.waiting`): under asp
    the steady state's period (a mini-batch is one profiled batch; the slowest stage, or a
    loop of consecutive stages' compute with their messages' delays, whichever is slower;
    the solvers minimise the slowest stage, which this is at least); under the
    synchronous schedules the simulated iteration over M micro-batches of the profiled batch
    size, bubbles and delays included. With `--jitter`, the expected time with every action's
    time varying that much (`planner.jitter`); the bubble stays the one at the mean times."""
    bottleneck = max(range(len(predictions)), key=lambda s: predictions[s].time_ms)
    if settings.schedule == "asp":
        ahead, back = _delays(predictions)
        if settings.jitter:
            forward, backward = split_stage_times(graph, stages, predictions)
            times = jitter.MeanTimes(forward, backward, ahead, back)
            chain_ms = jitter.asp_period_ms(times, settings.jitter)
        else:
            chain_ms = asp_period_ms([p.compute_ms for p in predictions], ahead, back)
        # a stage's own time also counts its links' occupancy (comm_in, comm_out), which is
        # not on the chain: the chain's edges are the messages' delays
        minibatch_ms, bubble = max(chain_ms, predictions[bottleneck].time_ms), 0.0
    else:
        forward, backward = split_stage_times(graph, stages, predictions)
        minibatch_ms, bubble = _flushing_step(settings, forward, backward, predictions)
    return _prediction(settings, batch_size, bottleneck, minibatch_ms, bubble)


def _delays(predictions: Sequence[StagePrediction]) -> tuple[list[float], list[float]]:
    """Each cut's message delays, activations forward and gradients back (`planner.waiting`)."""
    delays = cut_delays(predictions)
    return [d.activations_ms for d in delays], [d.gradients_ms for d in delays]


def _flushing_step(
    settings: PlanSettings,
    forward: Sequence[float],
    backward: Sequence[float],
    predictions: Sequence[StagePrediction],
) -> tuple[float, float]:
    """A synchronous schedule's time per step with the stages' forward and backward times,
    each message delayed as `planner.waiting` says, and its bubble: the simulated step, or
    with `--jitter` the expected one (the bubble stays the one at the means)."""
    ahead, back = _delays(predictions)
    timeline = simulate(settings.schedule, settings.microbatches, forward, backward, ahead, back)
    if not settings.jitter:
        return timeline.makespan_ms, timeline.bubble_fraction
    times = jitter.MeanTimes(forward, backward, ahead, back)
    expected = jitter.step_ms(settings.schedule, settings.microbatches, times, settings.jitter)
    return expected, timeline.bubble_fraction


def split_stage_times(
    graph: PlanGraph, stages: Sequence[Sequence[int]], predictions: Sequence[StagePrediction]
) -> tuple[list[float], list[float]]:
    """Each stage's predicted time as its forward and its backward: a forward sends
    activations and takes gradients' receives ahead (half the transfers' work), a backward
    the rest (recompute and the update included); the wire time is the messages' delay."""
    forward = [
        sum(graph.fwd_ms[n] for n in stage) + p.transfer_ms / 2
        for stage, p in zip(stages, predictions, strict=True)
    ]
    backward = [p.compute_ms - f for p, f in zip(predictions, forward, strict=True)]
    return forward, backward


def predict_replicated_pipeline(
    graph: PlanGraph,
    settings: PlanSettings,
    batch_size: int | None,
    stages: Sequence[Sequence[int]],
    replicas: Sequence[int],
    predictions: Sequence[StagePrediction],
) -> Prediction:
    """Time per mini-batch of a plan with data-parallel replicas. A replicated stage counts as
    one stage r times as fast (its replicas run its micro-batches side by side; `time_ms` is
    already their shared time): under asp the slowest stage sets the pace (the messages'
    delays on the dependency chain and the jitter are not modelled with replicas yet), under
    the synchronous schedules the simulated step (expected, with `--jitter`) with each
    stage's forward a share of that time."""
    bottleneck = max(range(len(predictions)), key=lambda s: predictions[s].time_ms)
    if settings.schedule == "asp":
        minibatch_ms, bubble = predictions[bottleneck].time_ms, 0.0
    else:
        forward, _ = split_stage_times(graph, stages, predictions)
        forward = [f / r for f, r in zip(forward, replicas, strict=True)]
        backward = [p.time_ms - f for p, f in zip(predictions, forward, strict=True)]
        minibatch_ms, bubble = _flushing_step(settings, forward, backward, predictions)
    return _prediction(settings, batch_size, bottleneck, minibatch_ms, bubble)


def _prediction(
    settings: PlanSettings,
    batch_size: int | None,
    bottleneck: int,
    minibatch_ms: float,
    bubble: float,
) -> Prediction:
    """The figures a plan states from its time per mini-batch: a step's samples (the profiled
    batch, or 1 if unknown, times M under 1f1b and gpipe) over that time."""
    samples = (batch_size or 1) * (1 if settings.schedule == "asp" else settings.microbatches)
    return Prediction(
        time_per_minibatch_ms=minibatch_ms,
        throughput_samples_per_s=samples / (minibatch_ms / 1e3) if minibatch_ms else 0.0,
        bottleneck_stage=bottleneck,
        bubble_fraction=bubble,
    )
