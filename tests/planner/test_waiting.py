"""Message delays from the stages' predictions (planner/waiting.py), against hand sums."""

import math

from vpipe.planner.schema import MemoryBreakdown, StagePrediction
from vpipe.planner.waiting import cut_delays, round_trip_ms


def _stage(transfer_ms: float, comm_out_ms: float) -> StagePrediction:
    nothing = MemoryBreakdown(0, 0, 0, 0, 0, 0)
    return StagePrediction(10.0, 0.0, 0.0, comm_out_ms, 10.0, nothing, transfer_ms, 0.0)


def test_each_cut_gets_its_own_link_work_and_wire_time():
    """Three stages, cuts with 0.4 and 0.6 ms of link work per end and 1 and 2 ms of wire time
    (both ways): the middle stage's transfer_ms holds both cuts' link work."""
    stages = [_stage(0.4, 1.0), _stage(1.0, 2.0), _stage(0.6, 0.0)]
    delays = cut_delays(stages)
    assert len(delays) == 2
    assert math.isclose(delays[0].activations_ms, 0.2 + 0.5)
    assert math.isclose(delays[1].gradients_ms, 0.3 + 1.0)
    assert math.isclose(round_trip_ms(delays[1]), 0.6 + 2.0)


def test_one_stage_has_no_cut():
    assert cut_delays([_stage(0.0, 0.0)]) == []
