"""Message delays from the stages' predictions (planner/waiting.py), against hand sums."""

import math

from vpipe.planner.schema import MemoryBreakdown, StagePrediction
from vpipe.planner.waiting import cut_delays, round_trip_ms


def _stage(delay_ms: float) -> StagePrediction:
    nothing = MemoryBreakdown(0, 0, 0, 0, 0, 0)
    return StagePrediction(10.0, 0.0, 0.0, 0.0, 10.0, nothing, 0.0, 0.0, delay_ms)


def test_each_cut_is_delayed_as_the_stage_before_it_predicts():
    """Three stages: the cuts take what the first two stages' predictions say, each way (the
    delay's terms: tests/planner/test_costmodel.py)."""
    delays = cut_delays([_stage(0.7), _stage(1.3), _stage(0.0)])
    assert len(delays) == 2
    assert (delays[0].activations_ms, delays[0].gradients_ms) == (0.7, 0.7)
    assert math.isclose(round_trip_ms(delays[1]), 2 * 1.3)


def test_one_stage_has_no_cut():
    assert cut_delays([_stage(0.0)]) == []
