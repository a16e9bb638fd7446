"""vpipe's planner against PipeDream's optimizer on PipeDream's own GPU profiles.

    python benchmarks/planner_vs_pipedream.py

For every row of ../shared/profiles/pipedream/BASELINES.md (straight pipeline, memory
unlimited, recompute off: vpipe's asp model then equals PipeDream's), prints PipeDream's
seconds per mini-batch, vpipe's, their ratio (>= 1.000 means vpipe is as fast or faster),
whether vpipe proved its answer optimal, and vpipe's solve time.
"""

from __future__ import annotations

import math
import re
import sys
import time
from pathlib import Path

from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import plan_graph
from vpipe.planner.schema import PlanSettings
from vpipe.profiler.pipedream import import_pipedream

PROFILES = Path(__file__).resolve().parents[1].parent / "shared" / "profiles" / "pipedream"
ROW = re.compile(r"^\| (\w+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \|")


def main() -> int:
    baselines = PROFILES / "BASELINES.md"
    if not baselines.exists():
        print(f"no {baselines}: the shared profiles are not beside this checkout")
        return 1
    header = (
        f"{'profile':<14} {'gpus':>4}  {'bandwidth':>9}  {'PipeDream s':>11}  "
        f"{'vpipe s':>9}  {'ratio':>6}  {'proven':>6}  {'solve s':>7}"
    )
    print(header)
    print("-" * len(header))
    worse = 0
    for line in baselines.read_text().splitlines():
        match = ROW.match(line)
        if not match:
            continue
        name, gpus = match[1], int(match[2])
        graph = plan_graph(import_pipedream(PROFILES / f"{name}.graph.txt"))
        for bandwidth, reference in ((math.inf, float(match[3])), (1.0, float(match[4]))):
            settings = PlanSettings(gpus=gpus, memory_bytes=math.inf, bandwidth_gbps=bandwidth)
            start = time.perf_counter()
            split = solve_dp(graph, settings)
            seconds = time.perf_counter() - start
            ours = split.bottleneck_ms / 1e3
            ratio = reference / ours
            worse += round(ours, 6) > reference  # the reference is printed to 6 decimals
            label = "none" if math.isinf(bandwidth) else "1 GB/s"
            print(
                f"{name:<14} {gpus:>4}  {label:>9}  {reference:>11.6f}  {ours:>9.6f}  "
                f"{ratio:>6.3f}  {'yes' if split.optimal else 'no':>6}  {seconds:>7.2f}"
            )
    print(f"\nrows where vpipe is slower than PipeDream: {worse}")
    return 1 if worse else 0


if __name__ == "__main__":
    sys.exit(main())
