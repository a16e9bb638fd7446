"""Planner speed, answer and stated gap with recompute on and a binding memory cap.

    python benchmarks/planner_speed.py [--quick]

For every shared PipeDream profile at 2, 4 and 8 stages, and for a 1,000-node synthetic
transformer-like DAG (a chain with a skip over every 4 nodes) at 16 stages, the cap is 80% of
what the fastest split without a limit needs on its fullest stage, so recompute must decide.
Prints the solve time (`planning.solve`, all of `vpipe-plan --solver auto`), the time per
mini-batch with and without the cap, the lower bound the planner proves under the cap and the
gap between them (0 when proven). Targets (issue 3): under 1 s per shared profile at S <= 8,
under 5 s for the synthetic DAG at S = 16.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from pathlib import Path

from vpipe.planner.graph import plan_graph
from vpipe.planner.planning import solve
from vpipe.planner.predict import predict_stages
from vpipe.planner.schema import PlanSettings
from vpipe.profiler.pipedream import import_pipedream
from vpipe.profiler.schema import NodeProfile, Profile, TensorMeta

PROFILES = Path(__file__).resolve().parents[1].parent / "shared" / "profiles" / "pipedream"


def synthetic(size: int) -> Profile:
    """A chain with a residual skip every 4 nodes; outputs and saved bytes vary by position."""
    nodes = []
    for i in range(size):
        inputs = (
            () if i == 0 else (f"n{i - 1}",) + ((f"n{i - 4}",) if i % 4 == 0 and i >= 4 else ())
        )
        out = 4096 * (1 + i % 3)
        nodes.append(
            NodeProfile(
                name=f"n{i}",
                op="placeholder" if i == 0 else "call_function",
                target="op",
                inputs=inputs,
                outputs=(TensorMeta((out // 4,), "float32"),),
                forward_ms=0.0 if i == 0 else 0.1 + (i % 7) * 0.05,
                backward_ms=0.0 if i == 0 else 0.2 + (i % 5) * 0.05,
                param_bytes=(i % 2) * 65536,
                grad_bytes=(i % 2) * 65536,
                buffer_bytes=0,
                output_bytes=out,
                saved_bytes=0 if i % 3 else 512,
                saved_inputs=inputs[:1] if i % 2 else (),
                saves_output=bool(i % 3),
            )
        )
    return Profile(
        source="synthetic",
        source_kind="model",
        device="-",
        dtype="float32",
        batch_size=1,
        optimizer="sgd",
        nodes=tuple(nodes),
        outputs=(f"n{size - 1}",),
    )


def measure(name: str, profile: Profile, gpus: int) -> str:
    graph = plan_graph(profile)
    free = PlanSettings(gpus=gpus, memory_bytes=math.inf, bandwidth_gbps=math.inf)
    unlimited = solve(profile, free)
    need = max(
        p.memory.total for p in predict_stages(graph, free, unlimited.stages, unlimited.recompute)
    )
    capped = dataclasses.replace(free, memory_bytes=0.8 * need)
    start = time.perf_counter()
    split = solve(profile, capped)
    seconds = time.perf_counter() - start
    if not split.feasible:
        ours, bound, gap = f"{'none fits':>10}", f"{'-':>10}", f"{'-':>7}"
    else:
        ours, bound = f"{split.bottleneck_ms:10.3f}", f"{split.lower_bound_ms:10.3f}"
        low = split.lower_bound_ms
        share = max((split.bottleneck_ms - low) / low, 0.0) if low > 0 else math.inf
        gap = f"{share:7.2%}" if math.isfinite(share) else f"{'?':>7}"
    return (
        f"{name:<14} {graph.size:>5} {gpus:>4} {seconds:>8.2f} "
        f"{'yes' if split.optimal else 'no':>6} {unlimited.bottleneck_ms:>10.3f} {ours} "
        f"{bound} {gap}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 and 4 stages only")
    args = parser.parse_args()
    print(
        f"{'profile':<14} {'nodes':>5} {'gpus':>4} {'solve s':>8} {'proven':>6} "
        f"{'free ms':>10} {'capped ms':>10} {'bound ms':>10} {'gap':>7}"
    )
    for path in sorted(PROFILES.glob("*.graph.txt")):
        for gpus in (2, 4) if args.quick else (2, 4, 8):
            print(
                measure(path.name.removesuffix(".graph.txt"), import_pipedream(path), gpus),
                flush=True,
            )
    print(measure("synthetic", synthetic(1000), 16), flush=True)


if __name__ == "__main__":
    main()
