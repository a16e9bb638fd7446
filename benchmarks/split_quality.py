"""Split quality, measured: vpipe's plan against the splits people make by rule, run for real.

    python benchmarks/split_quality.py [--models widehead gpt] [--stages 2] [--steps 300]

For each model: profile with one thread (what each stage runs with), then plan three ways with
`vpipe-plan --split`: `optimal` (vpipe's solvers), `uniform` (equal node counts per stage,
torchgpipe's and DeepSpeed's `uniform`) and `parameter-balanced` (DeepSpeed's `parameters`).
Each plan is generated and trained with asp on the same processes (one per stage, one thread
each), `--rounds` times interleaved so that drift in the machine's speed hits all alike; the
median samples/s counts, on two clocks (measuring.Throughput): wall time over the run, and what
the slowest stage's busy CPU time per micro-batch allows, which leaves out the time the machine
gave to others (the verdict's clock). Prints predicted and measured throughput and vpipe's gain
over each rule, and writes split_quality.png. Target (issue 7): >= 1.2x on the imbalanced model
(`vpipe.models.widehead`), measured.
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
from vpipe.planner.cli import main as plan_main
from vpipe.planner.schema import load_plan
from vpipe.profiler.cli import main as profile_main

RULES = ("optimal", "uniform", "parameter-balanced")
TARGET = 1.2


@dataclass(frozen=True)
class SplitResult:
    model: str
    stages: int
    rule: str
    stage_sizes: tuple[int, ...]
    predicted_samples_per_s: float
    measured: Throughput


def compare(model: str, stages: int, work: Path, steps: int, rounds: int) -> list[SplitResult]:
    folder = work / f"{model}{stages}"
    folder.mkdir()
    profile = folder / "profile.yaml"
    argv = [f"vpipe.models.{model}", "-o", str(profile), "-q", "--device", "cpu"]
    assert profile_main([*argv, "--threads", "1"]) == 0
    outs = {}
    for rule in RULES:
        plan = folder / f"{rule}.yaml"
        argv = [str(profile), "--gpus", str(stages), "--stages", str(stages), "--split", rule]
        argv += ["-o", str(plan), "-q"]
        assert plan_main(argv) == 0
        outs[rule] = folder / rule
        assert generate_main([str(plan), "-o", str(outs[rule]), "-q"]) == 0
    measured = interleaved_throughput(outs, steps, rounds)
    results = []
    for rule in RULES:
        planned = load_plan(folder / f"{rule}.yaml")
        results.append(
            SplitResult(
                model,
                stages,
                rule,
                tuple(len(s.nodes) for s in planned.stages),
                planned.predicted.throughput_samples_per_s,
                measured[rule],
            )
        )
    return results


def gains(results: list[SplitResult], clock: str) -> dict[tuple[str, int, str], float]:
    """vpipe's measured samples/s over each rule's, per (model, stages, rule), on `clock`."""
    best = {(r.model, r.stages): getattr(r.measured, clock) for r in results if r.rule == "optimal"}
    return {
        (r.model, r.stages, r.rule): best[r.model, r.stages] / getattr(r.measured, clock)
        for r in results
    }


def print_table(results: list[SplitResult]) -> None:
    print(
        f"{'model':<9} {'S':>2} {'split':<19} {'nodes per stage':<16} {'predicted':>9} "
        f"{'CPU clock':>9} {'gain':>6} {'wall':>9} {'gain':>6}   (samples/s)"
    )
    by_cpu, by_wall = gains(results, "cpu"), gains(results, "wall")
    for r in results:
        key = (r.model, r.stages, r.rule)
        sizes = "/".join(map(str, r.stage_sizes))
        print(
            f"{r.model:<9} {r.stages:>2} {r.rule:<19} {sizes:<16} "
            f"{r.predicted_samples_per_s:>9.1f} {r.measured.cpu:>9.1f} {by_cpu[key]:>5.2f}x "
            f"{r.measured.wall:>9.1f} {by_wall[key]:>5.2f}x"
        )


def plot(results: list[SplitResult], path: Path) -> None:
    plt = pyplot()
    groups = sorted({(r.model, r.stages) for r in results})
    fig, ax = plt.subplots(figsize=(3 + 3 * len(groups), 4))
    width = 0.8 / len(RULES)
    for j, rule in enumerate(RULES):
        values = [
            next(r.measured.cpu for r in results if (r.model, r.stages, r.rule) == (*g, rule))
            for g in groups
        ]
        ax.bar([i + j * width for i in range(len(groups))], values, width, label=rule)
    ax.set_xticks([i + width for i in range(len(groups))], [f"{m}, {s} stages" for m, s in groups])
    ax.set_ylabel("measured samples/s (slowest stage's CPU time)")
    ax.set_title("vpipe's split against rule-made splits (asp, CPU)")
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["widehead", "gpt"])
    parser.add_argument("--stages", nargs="+", type=int, default=[2])
    parser.add_argument("--steps", type=int, default=300, help="asp steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each; the median counts")
    parser.add_argument("--out", type=Path, default=Path("."), help="where the PNG goes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vpipe-splits-"))
    with measuring_steal() as steal:
        results = [
            r
            for model in args.models
            for stages in args.stages
            for r in compare(model, stages, work, args.steps, args.rounds)
        ]
    print(
        f"\nCPU, {os.cpu_count()} cores, asp, one process per stage, one thread each, "
        f"median of {args.rounds} interleaved rounds; {steal}"
    )
    print_table(results)
    by_cpu, by_wall = gains(results, "cpu"), gains(results, "wall")
    rules = [key for key in by_cpu if key[0] == "widehead" and key[2] != "optimal"]
    if rules:
        least = min(by_cpu[key] for key in rules)
        verdict = "PASS" if least >= TARGET else "FAIL"
        wall = min(by_wall[key] for key in rules)
        print(
            f"widehead: vpipe's gain over every rule >= {TARGET}x: {verdict} ({least:.2f}x on "
            f"the CPU clock; {wall:.2f}x by wall clock)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "split_quality.png")
    print(f"wrote {args.out / 'split_quality.png'}")


if __name__ == "__main__":
    main()
