"""The link cost the profiler fits predicts the CPU cost of a message size it did not measure."""

from __future__ import annotations

from dataclasses import replace

import pytest

from vpipe.profiler.linkcost import SIZES, _Exchange, _line, _pair, measure_link_cost
from vpipe.profiler.report import totals_lines
from vpipe.profiler.schema import LinkCost

from ..planner.randomgraphs import random_profile


def test_fitted_cost_predicts_an_unmeasured_size():
    cost = measure_link_cost(repeats=20, warmup=3, min_time_s=0.1)
    assert cost is not None and cost.backend == "gloo"
    assert cost.message_ms >= 0 and cost.ms_per_mib > 0
    mib = 2  # between the fitted sizes, none of them
    assert mib * 2**20 not in SIZES
    exchange = _Exchange(_pair(), mib * 2**20)
    exchange.cpu_ms(3)
    measured = min(exchange.cpu_ms(20) for _ in range(5))  # as the fit takes each size
    predicted = 2 * (cost.message_ms + mib * cost.ms_per_mib)  # both ends
    assert 0.5 < measured / predicted < 2, (measured, predicted)


def test_the_cost_of_a_small_message_is_its_own():
    """A pipeline of small stages sends tens of KiB: the fit's cost per message must predict
    such a message, which a line pulled by the 4 MiB point's wobble did not (0.025-0.074 ms)."""
    cost = measure_link_cost(repeats=20, warmup=3, min_time_s=0.1)
    assert cost is not None
    kib = 16
    exchange = _Exchange(_pair(), kib << 10)
    exchange.cpu_ms(20)
    measured = min(exchange.cpu_ms(200) for _ in range(5))
    predicted = 2 * (cost.message_ms + kib / 1024 * cost.ms_per_mib)  # both ends
    assert 0.5 < measured / predicted < 2, (measured, predicted)


def test_the_line_passes_through_the_smallest_size():
    # through (1, 3): the slope that fits (2, 5) and (3, 9) best is (1*2 + 2*6) / (1 + 4) = 2.8
    per_mib, per_message = _line([1.0, 2.0, 3.0], [3.0, 5.0, 9.0])
    assert per_mib == pytest.approx(2.8)
    assert per_message == pytest.approx(3.0 - 2.8)


def test_the_summary_states_the_link_cost():
    profile = replace(random_profile(0, 3), link=LinkCost("gloo", 0.125, 0.25))
    assert (
        "transfers between stages (gloo): 0.125 ms a message + 0.250 ms a MiB of each end's CPU"
        in totals_lines(profile)
    )
    assert not any("transfers" in line for line in totals_lines(replace(profile, link=None)))
