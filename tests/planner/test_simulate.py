"""Schedules as data and the simulator, against closed forms."""

import math
import random

import pytest

from vpipe.common.schedules import BACKWARD, FORWARD, peak_in_flight, schedule
from vpipe.planner.simulate import asp_period_ms, simulate, simulate_asp


@pytest.mark.parametrize("name", ["1f1b", "gpipe"])
@pytest.mark.parametrize("stages, microbatches", [(1, 1), (2, 4), (4, 4), (4, 8), (3, 2)])
def test_every_forward_before_its_backward(name, stages, microbatches):
    for actions in schedule(name, stages, microbatches):
        assert sorted((a.kind, a.microbatch) for a in actions) == sorted(
            [(FORWARD, i) for i in range(microbatches)]
            + [(BACKWARD, i) for i in range(microbatches)]
        )
        seen = set()
        for action in actions:
            if action.kind == BACKWARD:
                assert action.microbatch in seen
            seen.add(action.microbatch)


@pytest.mark.parametrize("stages, microbatches", [(2, 4), (4, 4), (4, 8), (3, 2)])
def test_in_flight_per_stage(stages, microbatches):
    for s, actions in enumerate(schedule("1f1b", stages, microbatches)):
        assert peak_in_flight(actions) == min(stages - s, microbatches)
    for actions in schedule("gpipe", stages, microbatches):
        assert peak_in_flight(actions) == microbatches


@pytest.mark.parametrize("name", ["1f1b", "gpipe"])
@pytest.mark.parametrize("stages, microbatches", [(2, 4), (4, 4), (4, 8)])
def test_balanced_makespan_and_bubble(name, stages, microbatches):
    """Equal stages, no transfer time: (M + S - 1)(f + b), bubble (S - 1) / (M + S - 1)."""
    timeline = simulate(name, microbatches, [1.0] * stages, [2.0] * stages, [0.0] * (stages - 1))
    assert math.isclose(timeline.makespan_ms, (microbatches + stages - 1) * 3.0)
    assert math.isclose(timeline.bubble_fraction, (stages - 1) / (microbatches + stages - 1))


def test_transfer_delays_the_pipeline():
    """One micro-batch over two stages: forward, transfer, forward, backward, transfer, back."""
    timeline = simulate("1f1b", 1, [1.0, 2.0], [3.0, 4.0], [0.5])
    assert timeline.makespan_ms == 1.0 + 0.5 + 2.0 + 4.0 + 0.5 + 3.0
    quick = simulate("1f1b", 4, [1.0, 1.0], [1.0, 1.0], [0.0])
    assert simulate("1f1b", 4, [1.0, 1.0], [1.0, 1.0], [0.5]).makespan_ms > quick.makespan_ms


def test_asp_period_two_stages_by_hand():
    """t0 = 3, t1 = 4: alone the slower stage sets the pace (4); with 1.5 ms each way the
    loop F0 -> F1 -> B1 -> B0 over its two micro-batches in flight takes (3 + 4 + 3) / 2 = 5."""
    assert asp_period_ms([3.0, 4.0], [0.0], [0.0]) == 4.0
    assert asp_period_ms([3.0, 4.0], [1.5], [1.5]) == 5.0
    assert asp_period_ms([3.0, 4.0], [0.5], [0.25]) == 4.0  # (7.75) / 2 < 4


@pytest.mark.parametrize("stages", [2, 3, 4])
def test_asp_period_is_the_simulated_steady_state(stages):
    """The closed form equals the simulated stream's pace, over a window that every cycle's
    length (1 .. S micro-batches) divides, long after the fill."""
    rng = random.Random(stages)
    window = math.lcm(*range(1, stages + 1)) * 4
    for _ in range(50):
        f = [rng.uniform(0.1, 3) for _ in range(stages)]
        b = [rng.uniform(0.1, 3) for _ in range(stages)]
        ahead = [rng.uniform(0, 2) for _ in range(stages - 1)]
        back = [rng.uniform(0, 2) for _ in range(stages - 1)]
        count = 6 * window + 4 * stages
        timeline = simulate_asp(count, f, b, ahead, back)
        ends = {
            e.action.microbatch: e.end_ms
            for e in timeline.events
            if e.stage == 0 and e.action.kind == BACKWARD
        }
        last = count - stages - 1
        simulated = (ends[last] - ends[last - 3 * window]) / (3 * window)
        busy = [x + y for x, y in zip(f, b, strict=True)]
        assert math.isclose(simulated, asp_period_ms(busy, ahead, back), rel_tol=1e-9)
