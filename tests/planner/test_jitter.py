"""Varying action times (planner/jitter.py) against closed forms and recurrences written out by
hand here, each with its own random draws."""

import math
import random
import statistics
from dataclasses import replace

import pytest

from vpipe.common.errors import VpipeError
from vpipe.common.schedules import Action
from vpipe.planner import jitter
from vpipe.planner.graph import plan_graph
from vpipe.planner.predict import predict_pipeline, predict_stages, split_stage_times
from vpipe.planner.simulate import asp_period_ms, simulate

from .handmade import PROFILE, SETTINGS


def log_normal(rng: random.Random, mean: float, sigma: float) -> float:
    return mean * math.exp(rng.gauss(-sigma * sigma / 2, sigma))


def two_stage_asp_period(f, b, d, g, sigma, microbatches=8000, seed=7):
    """Two stages under asp, written as their recurrence: stage 0 runs F0 F1 B0 F2 B1 ...,
    stage 1 F0 B0 F1 B1 ...; each action ends when it started (its stage free, its input there)
    plus its drawn time. The first stage's backwards' pace past the first quarter."""
    rng = random.Random(seed)
    f0_end = [log_normal(rng, f[0], sigma)]
    b0_end, f1_end, b1_end = [], [], []
    for j in range(microbatches):
        stage0_free = f0_end[0] if j == 0 else b0_end[j - 1]
        f0_end.append(stage0_free + log_normal(rng, f[0], sigma))  # F0(j + 1)
        stage1_free = b1_end[j - 1] if j else 0.0
        f1_end.append(max(stage1_free, f0_end[j] + d) + log_normal(rng, f[1], sigma))
        b1_end.append(f1_end[j] + log_normal(rng, b[1], sigma))
        b0_end.append(max(f0_end[j + 1], b1_end[j] + g) + log_normal(rng, b[0], sigma))
    first = microbatches // 4
    return (b0_end[-1] - b0_end[first]) / (microbatches - 1 - first)


def two_stage_1f1b_step(f, b, d, g, sigma, steps=20000, seed=7):
    """Two stages, 1F1B with a flush, two micro-batches: stage 0 runs F0 F1 B0 B1, stage 1
    F0 B0 F1 B1. The mean of the steps' makespans."""
    rng = random.Random(seed)
    total = 0.0
    for _ in range(steps):
        f00 = log_normal(rng, f[0], sigma)
        f01 = f00 + log_normal(rng, f[0], sigma)
        f10 = f00 + d + log_normal(rng, f[1], sigma)
        b10 = f10 + log_normal(rng, b[1], sigma)
        b00 = max(f01, b10 + g) + log_normal(rng, b[0], sigma)
        f11 = max(b10, f01 + d) + log_normal(rng, f[1], sigma)
        b11 = f11 + log_normal(rng, b[1], sigma)
        total += max(b00, b11 + g) + log_normal(rng, b[0], sigma)
    return total / steps


@pytest.mark.parametrize("seed", range(4))
def test_without_jitter_the_walk_is_the_closed_form(seed):
    rng = random.Random(seed)
    stages = rng.randint(1, 5)
    forward = [rng.uniform(0.5, 3) for _ in range(stages)]
    backward = [rng.uniform(1, 5) for _ in range(stages)]
    ahead = [rng.uniform(0, 1) for _ in range(stages - 1)]
    back = [rng.uniform(0, 1) for _ in range(stages - 1)]
    busy = [f + b for f, b in zip(forward, backward, strict=True)]
    times = jitter.MeanTimes(forward, backward, ahead, back)
    period = jitter.asp_period_ms(times, 0.0)
    # to within the cycles' phase at the window's ends (a cycle holds up to S micro-batches)
    assert period == pytest.approx(asp_period_ms(busy, ahead, back), rel=1e-3)
    step = jitter.step_ms("1f1b", 4, times, 0.0)
    assert step == pytest.approx(simulate("1f1b", 4, forward, backward, ahead, back).makespan_ms)


def test_each_action_is_drawn_around_its_own_mean():
    duration = jitter.drawn([2.0], [6.0], 0.2, seed=3)
    forwards = [duration(0, Action("F", i)) for i in range(20000)]
    backwards = [duration(0, Action("B", i)) for i in range(20000)]
    assert statistics.mean(forwards) == pytest.approx(2.0, rel=0.01)
    assert statistics.mean(backwards) == pytest.approx(6.0, rel=0.01)
    assert statistics.pstdev(math.log(x) for x in forwards) == pytest.approx(0.2, rel=0.02)


@pytest.mark.parametrize("sigma", [0.1, 0.2])
def test_two_even_stages_wait_as_their_recurrence_says(sigma):
    """The walk against the hand-written recurrence, and the effect it models: more than at
    the means."""
    f, b, d, g = (0.4, 0.4), (0.6, 0.6), 0.03, 0.03
    period = jitter.asp_period_ms(jitter.MeanTimes(f, b, [d], [g]), sigma)
    assert period == pytest.approx(two_stage_asp_period(f, b, d, g, sigma), rel=0.015)
    at_means = asp_period_ms([1.0, 1.0], [d], [g])
    assert period > at_means * (1 + sigma / 5)


def test_a_stage_that_never_waits_runs_at_its_mean():
    """One stage alone, and one twice as slow as its neighbour: the drawn times average out."""
    alone = jitter.MeanTimes([0.4], [0.6], [], [])
    assert jitter.asp_period_ms(alone, 0.3) == pytest.approx(1.0, rel=0.015)
    uneven = jitter.MeanTimes([0.8, 0.2], [1.2, 0.3], [0.0], [0.0])
    assert jitter.asp_period_ms(uneven, 0.2) == pytest.approx(2.0, rel=0.015)


def test_a_flushing_step_is_its_recurrences_mean():
    f, b, d, g = (0.5, 0.4), (0.9, 0.8), 0.05, 0.1
    step = jitter.step_ms("1f1b", 2, jitter.MeanTimes(f, b, [d], [g]), 0.2)
    assert step == pytest.approx(two_stage_1f1b_step(f, b, d, g, 0.2), rel=0.015)
    assert step > simulate("1f1b", 2, list(f), list(b), [d], [g]).makespan_ms


@pytest.mark.parametrize("schedule, microbatches", [("asp", 1), ("1f1b", 4)])
def test_the_plan_predicts_the_expected_time_with_jitter(schedule, microbatches):
    """The handmade 3-stage example: the plan's time per mini-batch is planner.jitter's figure
    for its stages' forward and backward times (under asp, at least the slowest stage's own
    time, its links included), and more than at the means."""
    graph = plan_graph(PROFILE)
    stages, recompute = [[0, 1], [2, 3], [4, 5]], [(), (), ()]
    settings = replace(SETTINGS, schedule=schedule, microbatches=microbatches)
    shaky = replace(settings, jitter=0.2)
    predictions = predict_stages(graph, shaky, stages, recompute)
    forward, backward = split_stage_times(graph, stages, predictions)
    delays = [p.delay_ms for p in predictions[:-1]]
    times = jitter.MeanTimes(forward, backward, delays, delays)
    if schedule == "asp":
        chain = jitter.asp_period_ms(times, 0.2)
        expected = max(chain, max(p.time_ms for p in predictions))
    else:
        expected = jitter.step_ms(schedule, microbatches, times, 0.2)
    predicted = predict_pipeline(graph, shaky, None, stages, predictions)
    steady = predict_pipeline(graph, settings, None, stages, predictions)
    assert predicted.time_per_minibatch_ms == pytest.approx(expected)
    assert predicted.time_per_minibatch_ms > steady.time_per_minibatch_ms


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan])
def test_jitter_must_be_a_finite_spread(bad):
    with pytest.raises(VpipeError, match="--jitter"):
        replace(SETTINGS, jitter=bad)
