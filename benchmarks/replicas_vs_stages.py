"""N processes as pipeline stages or as data-parallel replicas: measured against predicted.

    python benchmarks/replicas_vs_stages.py [--models mlp resnet] [--rounds 3] [--steps 40]

For each bundled model: profile it with one thread, plan it on 2 processes three ways with
`vpipe-plan --gpus 2` (a straight pipeline: 2 stages), `--stages 1` (one stage, 2 replicas:
data parallel) and `--stages auto` (the planner's pick), under 1f1b with 4 micro-batches a
step, generate each and train it in interleaved rounds (the median counts). It prints each
layout's predicted and measured samples/s (wall clock, as `vpipe-train` reports it) and the
replicas-over-stages ratio, measured and predicted, from the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

from measuring import measuring_steal, samples_per_s

from vpipe.codegen.cli import main as generate_main
from vpipe.codegen.schema import load_pipeline
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main

BATCH = {"mlp": 64, "resnet": 8, "gpt": 8}
LAYOUTS = {"stages": ("--stages", "2"), "replicas": ("--stages", "1"), "auto": ("--stages", "auto")}
MICROBATCHES = 4


@dataclass(frozen=True)
class Layout:
    """One way to use the processes: its pipeline folder and what its plan predicts."""

    out: Path
    predicted: float  # samples/s
    shape: str  # replicas per stage, e.g. "1 1" or "2"


def prepare(model: str, work: Path) -> dict[str, Layout]:
    folder = work / model
    folder.mkdir()
    profile = folder / "profile.yaml"
    argv = [f"vpipe.models.{model}", "-o", str(profile), "-q", "--device", "cpu", "--threads"]
    assert profile_main([*argv, "1", "--batch-size", str(BATCH[model])]) == 0
    layouts = {}
    for name, flags in LAYOUTS.items():
        plan, out = folder / f"{name}.yaml", folder / name
        schedule = ["--schedule", "1f1b", "--microbatches", str(MICROBATCHES)]
        argv = [str(profile), "--gpus", "2", *schedule, *flags, "-o", str(plan), "-q"]
        assert plan_main(argv) == 0
        assert generate_main([str(plan), "-o", str(out), "-q"]) == 0
        pipeline = load_pipeline(out / "pipeline.yaml")
        layouts[name] = Layout(
            out,
            pipeline.predicted.throughput_samples_per_s,
            " ".join(str(len(stage.ranks)) for stage in pipeline.stages),
        )
    return layouts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "resnet"], choices=list(BATCH))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="per timed run")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vpipe-replicas-"))
    layouts = {(m, n): layout for m in args.models for n, layout in prepare(m, work).items()}
    measured: dict[tuple[str, str], list[float]] = {key: [] for key in layouts}
    with measuring_steal() as steal:
        for round_ in range(args.rounds):
            for key in layouts if round_ % 2 == 0 else reversed(list(layouts)):
                measured[key].append(samples_per_s(layouts[key].out, args.steps))
    print(
        f"\nCPU, {os.cpu_count()} cores, 2 processes, one thread each, 1f1b with "
        f"{MICROBATCHES} micro-batches, median of {args.rounds} interleaved rounds; "
        f"{steal}; work files in {work}"
    )
    print(
        f"{'model':<8} {'layout':<9} {'replicas':<9} {'predicted':>10} {'measured':>10} "
        f"{'ratio':>6}  (samples/s)"
    )
    for model in args.models:
        rates = {n: statistics.median(measured[model, n]) for n in LAYOUTS}
        for name in LAYOUTS:
            layout = layouts[model, name]
            print(
                f"{model:<8} {name:<9} {layout.shape:<9} {layout.predicted:>10.1f} "
                f"{rates[name]:>10.1f} {rates[name] / layout.predicted:>6.2f}"
            )
        predicted = layouts[model, "replicas"].predicted / layouts[model, "stages"].predicted
        print(
            f"{model:<8} replicas / stages: measured {rates['replicas'] / rates['stages']:.2f}x, "
            f"predicted {predicted:.2f}x"
        )


if __name__ == "__main__":
    main()
