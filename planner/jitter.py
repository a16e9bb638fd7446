"""What varying action times add to a pipeline's time: `vpipe-plan --jitter`.

A stage's forwards and backwards do not each take their mean: on a shared CPU machine the same
action runs 10-30% longer or shorter from one micro-batch to the next (other threads, the
hypervisor). Where a stage waits for its neighbour, the neighbour's slow actions become its
waiting, and they are not made up by its fast ones: the mean of a maximum is more than the
maximum of the means. Two even stages under asp, actions varying by sigma = 0.15 (the standard
deviation of their logarithm), run 6% slower than at their means, 4 even stages 10%, 16 14%; a
stage alone, or one far slower than the rest (twice its neighbour's time: 0.9997 of its mean),
does not wait.

The expectation is taken by walking the schedule (`simulate.walk`) with every action's time
drawn independently from a log-normal distribution around its mean (the mean kept: exp of a
normal with mean -sigma^2 / 2), from a fixed seed, so that a plan is the same each time it is
made: asp over a long stream of micro-batches (its steady state's period), a flushing schedule
over many independent steps (each step's makespan). With sigma = 0 the walk is the
deterministic one, which `simulate.asp_period_ms` gives in closed form.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from vpipe.common.schedules import BACKWARD, Action, run_actions, schedule
from vpipe.planner.simulate import Duration, walk

SEED = 0
# actions walked: at sigma 0.2 the figure's standard deviation over seeds is 0.2-0.25% (asp at 2
# and 8 stages; 1f1b at 2 stages of 4 micro-batches), for 0.1-0.2 s of walking (more where a
# flushing step has over 400 actions: at least LEAST_STEPS steps are walked)
ASP_ACTIONS = 16_000  # in asp's one stream
STEP_ACTIONS = 20_000  # over a flushing schedule's independent steps, all together
LEAST_STEPS = 50


@dataclass(frozen=True)
class MeanTimes:
    """What the draws vary around: each stage's mean forward and backward, and each cut's
    message delays, one way each (ms; `planner.waiting`)."""

    forward_ms: Sequence[float]
    backward_ms: Sequence[float]
    transfer_ms: Sequence[float]  # activations, from stage s to s + 1
    gradient_ms: Sequence[float]  # gradients, from s + 1 back to s


def drawn(
    forward_ms: Sequence[float], backward_ms: Sequence[float], sigma: float, seed: int = SEED
) -> Duration:
    """Each action's time drawn around its stage's mean, log-normal with log-sd `sigma`."""
    rng = random.Random(seed)
    shift = -sigma * sigma / 2

    def duration(s: int, action: Action) -> float:
        mean = backward_ms[s] if action.kind == BACKWARD else forward_ms[s]
        return mean * math.exp(rng.gauss(shift, sigma))

    return duration


def asp_period_ms(times: MeanTimes, sigma: float) -> float:
    """asp's expected time per micro-batch in its steady state with every action's time
    varying by `sigma`: the first stage's backwards' pace past the stream's first quarter (the
    pipeline filling and settling) and before its last S backwards (draining, no forwards
    between them)."""
    stages = len(times.forward_ms)
    microbatches = max(200, ASP_ACTIONS // (2 * stages))
    plans = run_actions("asp", stages, 1, microbatches)
    duration = drawn(times.forward_ms, times.backward_ms, sigma)
    timeline = walk("asp", plans, duration, times.transfer_ms, times.gradient_ms)
    ends = sorted(e.end_ms for e in timeline.events if e.stage == 0 and e.action.kind == BACKWARD)
    first, last = len(ends) // 4, len(ends) - 1 - stages
    return (ends[last] - ends[first]) / (last - first)


def step_ms(schedule_name: str, microbatches: int, times: MeanTimes, sigma: float) -> float:
    """A flushing schedule's expected time per step with every action's time varying by
    `sigma`: the mean makespan of independent steps (a step starts when the last one has
    drained, so steps do not overlap)."""
    plans = schedule(schedule_name, len(times.forward_ms), microbatches)
    actions = sum(len(p) for p in plans)
    steps = max(LEAST_STEPS, STEP_ACTIONS // actions)
    duration = drawn(times.forward_ms, times.backward_ms, sigma)
    total = sum(
        walk(schedule_name, plans, duration, times.transfer_ms, times.gradient_ms).makespan_ms
        for _ in range(steps)
    )
    return total / steps
