"""Every row of PipeDream's reference figures is met, and the baseline splits are right."""

import math
import re

import pytest

from vpipe.planner.baselines import parameter_balanced_split, uniform_split
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import plan_graph
from vpipe.planner.schema import PlanSettings
from vpipe.profiler.pipedream import import_pipedream

from ..conftest import PIPEDREAM

# a row of the straight-pipeline table: profile, GPUs, no communication, 1 GB/s, run time (the
# hybrid table's rows have six cells, the proven optima's three)
ROW = re.compile(r"^\| (\w+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| [\d.]+ \|$")


def rows():
    baselines = PIPEDREAM / "BASELINES.md"
    if not baselines.exists():
        return []
    return [m.groups() for m in map(ROW.match, baselines.read_text().splitlines()) if m]


@pytest.mark.skipif(
    not (PIPEDREAM / "BASELINES.md").exists(),
    reason="../shared/profiles/pipedream is not beside this checkout",
)
@pytest.mark.parametrize("name, gpus, no_comm, one_gbps", rows())
def test_meets_pipedream(name, gpus, no_comm, one_gbps):
    graph = plan_graph(import_pipedream(PIPEDREAM / f"{name}.graph.txt"))
    for bandwidth, reference in ((math.inf, float(no_comm)), (1.0, float(one_gbps))):
        settings = PlanSettings(gpus=int(gpus), memory_bytes=math.inf, bandwidth_gbps=bandwidth)
        ours = solve_dp(graph, settings).bottleneck_ms / 1e3
        assert round(ours, 6) <= reference  # the reference is printed to 6 decimals


def test_uniform_split():
    assert uniform_split(7, 3) == [[0, 1], [2, 3, 4], [5, 6]]


def test_parameter_balanced_split_minimises_the_heaviest_part():
    weights = [5, 1, 1, 1, 1, 5, 2, 2]
    parts = parameter_balanced_split(weights, 3)
    assert [n for p in parts for n in p] == list(range(8))
    # brute force over every way to cut 8 items into 3 contiguous parts
    best = min(
        max(sum(weights[:a]), sum(weights[a:b]), sum(weights[b:]))
        for a in range(1, 7)
        for b in range(a + 1, 8)
    )
    assert max(sum(weights[n] for n in p) for p in parts) == best
