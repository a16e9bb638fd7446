"""The link cost the profiler fits predicts the CPU cost of a message size it did not measure."""

from __future__ import annotations

from dataclasses import replace

from vpipe.profiler.linkcost import SIZES, _Exchange, _pair, measure_link_cost
from vpipe.profiler.report import totals_lines
from vpipe.profiler.schema import LinkCost

from ..planner.randomgraphs import random_profile


def test_fitted_cost_predicts_an_unmeasured_size():
    cost = measure_link_cost(repeats=20, warmup=3)
    assert cost is not None and cost.backend == "gloo"
    assert cost.message_ms >= 0 and cost.ms_per_mib > 0
    mib = 2  # between the fitted sizes, none of them
    assert mib * 2**20 not in SIZES
    exchange = _Exchange(_pair(), mib * 2**20)
    exchange.cpu_ms(3)
    measured = min(exchange.cpu_ms(20) for _ in range(5))  # as the fit takes each size
    predicted = 2 * (cost.message_ms + mib * cost.ms_per_mib)  # both ends
    assert 0.5 < measured / predicted < 2, (measured, predicted)


def test_the_summary_states_the_link_cost():
    profile = replace(random_profile(0, 3), link=LinkCost("gloo", 0.125, 0.25))
    assert (
        "transfers between stages (gloo): 0.125 ms a message + 0.250 ms a MiB of each end's CPU"
        in totals_lines(profile)
    )
    assert not any("transfers" in line for line in totals_lines(replace(profile, link=None)))
