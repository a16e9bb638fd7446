"""vpipe's hybrid plans (stages x data-parallel replicas) against PipeDream's on its GPU profiles.

    python benchmarks/hybrid_vs_pipedream.py [--profiles resnet50 ...]

For every row of BASELINES.md's hybrid table (PipeDream's optimizer without
`--straight_pipeline`: N GPUs, 1 or 10 GB/s, memory unlimited) it plans the same profile with
`planner.hybrid.solve_hybrid` twice: with PipeDream's all-reduce term, 4 (r - 1) / r x bytes /
bandwidth, where vpipe's time is comparable with PipeDream's figure (target: never more than 5%
slower), and with vpipe's own, a ring all-reduce's 2 (r - 1) / r (each replica sends and
receives at once over a full-duplex link, as NCCL's and gloo's rings do). It prints the
replicas per stage, the best straight pipeline on the same GPUs under vpipe's model and the gain
replication brings over it, and the search's wall seconds.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from vpipe.planner.costmodel import PIPEDREAM_ALLREDUCE, RING
from vpipe.planner.graph import plan_graph
from vpipe.planner.hybrid import solve_hybrid
from vpipe.planner.schema import PlanSettings
from vpipe.profiler.pipedream import import_pipedream

PROFILES = Path(__file__).resolve().parents[1].parent / "shared" / "profiles" / "pipedream"
HYBRID_ROW = re.compile(r"^\| (\w+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d ]+) \|")
TARGET = 1.05  # vpipe / PipeDream on PipeDream's terms


@dataclass(frozen=True)
class HybridReference:
    """One row of BASELINES.md's hybrid table."""

    profile: str
    gpus: int
    bandwidth_gbps: float
    seconds: float
    replicas: tuple[int, ...]


def references(baselines: Path) -> list[HybridReference]:
    rows = []
    for line in baselines.read_text().splitlines():
        if match := HYBRID_ROW.match(line):
            replicas = tuple(int(r) for r in match[5].split())
            rows.append(
                HybridReference(match[1], int(match[2]), float(match[3]), float(match[4]), replicas)
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="*", help="profile names (default: every row's)")
    args = parser.parse_args()
    rows = [
        r
        for r in references(PROFILES / "BASELINES.md")
        if r.profile in (args.profiles or [r.profile])
    ]
    print(
        f"{'profile':14s}{'GPUs':>5s}{'GB/s':>6s}{'PipeDream':>11s}  {'its replicas':16s}"
        f"{'vpipe*':>10s}{'ratio':>7s}  {'replicas*':16s}{'vpipe ring':>11s}  {'replicas':16s}"
        f"{'straight':>10s}{'gain':>7s}{'wall s':>8s}"
    )
    worst = 0.0
    graphs = {}
    for row in rows:
        if row.profile not in graphs:
            graphs[row.profile] = plan_graph(
                import_pipedream(PROFILES / f"{row.profile}.graph.txt")
            )
        graph = graphs[row.profile]
        settings = PlanSettings(
            gpus=row.gpus, memory_bytes=math.inf, bandwidth_gbps=row.bandwidth_gbps
        )
        start = time.perf_counter()
        theirs = solve_hybrid(graph, settings, model=PIPEDREAM_ALLREDUCE)
        ours = solve_hybrid(graph, settings, model=RING)
        straight = solve_hybrid(graph, settings, replicate=False)
        wall = time.perf_counter() - start
        ratio = theirs.bottleneck_ms / 1e3 / row.seconds
        worst = max(worst, ratio)
        print(
            f"{row.profile:14s}{row.gpus:5d}{row.bandwidth_gbps:6g}{row.seconds:11.6f}  "
            f"{' '.join(map(str, row.replicas)):16s}"
            f"{theirs.bottleneck_ms / 1e3:10.6f}{ratio:7.3f}  "
            f"{' '.join(map(str, theirs.replicas)):16s}{ours.bottleneck_ms / 1e3:11.6f}  "
            f"{' '.join(map(str, ours.replicas)):16s}{straight.bottleneck_ms / 1e3:10.6f}"
            f"{straight.bottleneck_ms / ours.bottleneck_ms:6.2f}x{wall:8.2f}"
        )
    print(
        f"seconds per mini-batch; vpipe* and ratio: vpipe's search on PipeDream's all-reduce term "
        f"(ratio = vpipe* / PipeDream, target <= {TARGET}); vpipe ring: vpipe's own term; "
        f"straight: the best straight pipeline on up to the same GPUs (vpipe's model); gain: "
        f"straight / vpipe ring. Worst ratio: {worst:.3f} over {len(rows)} rows."
    )


if __name__ == "__main__":
    main()
