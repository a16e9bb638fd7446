"""Memory-bound planning, measured: recompute chosen per stage against recomputing everything.

    python benchmarks/memory_bound.py [--model gpt] [--stages 2] [--steps 200]

Profiles the model with one thread (as each stage runs), then finds by bisection the smallest
`--memory` at which `vpipe-plan --recompute never` still finds a plan, and sets the cap 10%
below it (or 7, 4, 1% below, the first at which recomputing everything fits at all): there, no
split fits without recompute (the planner proves it: `never` fails). At that cap it plans
twice: `--recompute auto` (vpipe: per stage, the cheapest recompute that fits) and `--recompute
all` (the GPipe habit: every stage recomputes its whole forward, same split). Both are generated
and trained with asp, one process per stage and one thread each: `--rounds` timed runs,
interleaved (the median counts), and one run with `--measure-memory` (the peak of live tensor
bytes per stage, counted op by op: common/memory.py). Prints, per plan and stage, the predicted
and measured peak against the cap, and the throughput of each on two clocks (see
measuring.Throughput); writes memory_bound.png.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from measuring import Throughput, interleaved_throughput, measuring_steal

from vpipe.codegen.cli import main as generate_main
from vpipe.common.plotting import pyplot, save_figure
from vpipe.common.yamlfile import load_yaml
from vpipe.planner.cli import main as plan_main
from vpipe.planner.schema import load_plan
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime.cli import main as train_main

GIB = 2**30
CHOICES = ("auto", "all")


@dataclass(frozen=True)
class Run:
    recompute: str
    recomputed: tuple[int, ...]  # nodes recomputed per stage
    predicted_bytes: tuple[int, ...]
    measured_bytes: tuple[int, ...]
    measured: Throughput


def plans(profile: Path, stages: int, memory_gib: float, recompute: str, path: Path) -> bool:
    argv = [
        str(profile),
        "--gpus",
        str(stages),
        "--stages",
        str(stages),
        "--memory",
        repr(memory_gib),
    ]
    return plan_main([*argv, "--recompute", recompute, "-o", str(path), "-q"]) == 0


def smallest_cap(profile: Path, stages: int, work: Path) -> float:
    """The least --memory (GiB) at which a plan without recompute exists, to 0.5%."""
    high = 1.0
    while not plans(profile, stages, high, "never", work / "probe.yaml"):
        high *= 2
    low = high / 2
    while plans(profile, stages, low, "never", work / "probe.yaml"):
        low, high = low / 2, low
    while high / low > 1.005:  # low never fits, high does
        middle = (low * high) ** 0.5
        if plans(profile, stages, middle, "never", work / "probe.yaml"):
            high = middle
        else:
            low = middle
    return high


def peaks(out: Path, stages: int) -> tuple[int, ...]:
    argv = [str(out / "pipeline.yaml"), "--steps", str(3 * stages), "--threads", "1"]
    assert train_main([*argv, "--measure-memory", "--print-every", str(10**9)]) == 0
    return tuple(
        load_yaml(out / "run" / f"stage_{k}.yaml", "stage log")["peak_memory_bytes"]
        for k in range(stages)
    )


def print_table(runs: list[Run], cap_bytes: float, usable: float) -> None:
    print(f"cap --memory {cap_bytes / 2**20:.2f} MiB (usable after 10% headroom ", end="")
    print(f"{usable / 2**20:.2f} MiB); no split fits without recompute at this cap")
    print(
        f"{'recompute':<10} {'stage':>5} {'recomputed':>10} {'pred MiB':>9} {'meas MiB':>9} "
        f"{'meas/cap':>8} {'samples/s: CPU clock':>20} {'wall':>7}"
    )
    for run in runs:
        for k, (pred, meas) in enumerate(zip(run.predicted_bytes, run.measured_bytes, strict=True)):
            print(
                f"{run.recompute:<10} {k:>5} {run.recomputed[k]:>10} {pred / 2**20:>9.2f} "
                f"{meas / 2**20:>9.2f} {meas / cap_bytes:>8.2f} "
                + (f"{run.measured.cpu:>20.1f} {run.measured.wall:>7.1f}" if k == 0 else "")
            )
    auto, everything = runs
    print(
        f"vpipe's per-stage recompute vs recomputing everything: "
        f"{auto.measured.cpu / everything.measured.cpu:.2f}x the throughput on the CPU clock, "
        f"{auto.measured.wall / everything.measured.wall:.2f}x by wall clock"
    )


def plot(runs: list[Run], cap_bytes: float, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    stages = len(runs[0].measured_bytes)
    width = 0.8 / (2 * len(runs))
    for j, run in enumerate(runs):
        for kind, values, offset in (
            ("predicted", run.predicted_bytes, 0),
            ("measured", run.measured_bytes, 1),
        ):
            xs = [k + (2 * j + offset) * width for k in range(stages)]
            ax.bar(xs, [v / 2**20 for v in values], width, label=f"{run.recompute}, {kind}")
    ax.axhline(cap_bytes / 2**20, color="red", linestyle="--", label="cap (--memory)")
    ax.set_xticks([k + 1.5 * width for k in range(stages)], [f"stage {k}" for k in range(stages)])
    ax.set_ylabel("MiB")
    ax.set_title("peak memory per stage under a cap no recompute-free split fits")
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt")
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200, help="asp steps per timed run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs; the median counts")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the PNG goes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vpipe-memory-"))
    profile = work / "profile.yaml"
    argv = [f"vpipe.models.{args.model}", "-o", str(profile), "-q", "--device", "cpu"]
    assert profile_main([*argv, "--threads", "1"]) == 0
    least = smallest_cap(profile, args.stages, work)
    # the highest of these caps at which recomputing everything fits (one segment per stage
    # rebuilds a whole micro-batch's activations at once, which may not fit where auto does)
    cap = next(
        (
            least * share
            for share in (0.9, 0.93, 0.96, 0.99)
            if plans(profile, args.stages, least * share, "all", work / "all.yaml")
        ),
        None,
    )
    if cap is None:
        raise SystemExit("recomputing everything fits no cap below the recompute-free one")
    assert not plans(profile, args.stages, cap, "never", work / "never.yaml")
    outs = {}
    for choice in CHOICES:
        assert plans(profile, args.stages, cap, choice, work / f"{choice}.yaml")
        outs[choice] = work / choice
        assert generate_main([str(work / f"{choice}.yaml"), "-o", str(outs[choice]), "-q"]) == 0
    with measuring_steal() as steal:
        timed = interleaved_throughput(outs, args.steps, args.rounds)
    runs = []
    for choice in CHOICES:
        planned = load_plan(work / f"{choice}.yaml")
        runs.append(
            Run(
                choice,
                tuple(len(s.recompute) for s in planned.stages),
                tuple(s.predicted.memory.total for s in planned.stages),
                peaks(outs[choice], args.stages),
                timed[choice],
            )
        )
    print(
        f"\n{args.model}, {args.stages} stages, asp, CPU ({os.cpu_count()} cores), one thread "
        f"per stage, median of {args.rounds} interleaved rounds; {steal}; work files in {work}"
    )
    print_table(runs, cap * GIB, cap * GIB * 0.9)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(runs, cap * GIB, args.out / "memory_bound.png")
    print(f"wrote {args.out / 'memory_bound.png'}")


if __name__ == "__main__":
    main()
