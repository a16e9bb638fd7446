"""--bind-cores keeps a slowdown on its own stage: a CPU hog on stage 1's core, in one run.

    python benchmarks/bind_cores.py [--steps 150] [--rounds 3]

Profiles the bundled GPT (micro-batch 8) with one thread, plans 2 stages (the planner's
default schedule, asp), generates them, then trains them three ways, one thread per stage, in
turn and in reverse order every other round (the medians count): with `--bind-cores` (stage k
on block k of `runtime/cores.py`'s rule: here core k); the same with a hog of
`benchmarks/burner.py` pinned to stage 1's core from the start; and without `--bind-cores` with
the same hog, where the kernel moves both stages' threads over both cores. Prints samples/s and
each stage's busy milliseconds per micro-batch (forward and backward, waiting left out) on two
clocks, CPU time and wall time, with each hog run's ratio to the run without. Bound, stage 0's
figures and stage 1's CPU time should hold (1.0x) while stage 1's wall time grows: the slowdown
is stage 1's alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from burner import burning
from measuring import await_quiet, busy_ms, measuring_others, samples_per_s

from vpipe.codegen.cli import main as generate_main
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime.cores import core_block

BATCH = 8
STAGES = 2


@dataclass(frozen=True)
class Timed:
    """One run, or the medians of several: samples/s by wall clock over the run, per stage its
    busy milliseconds per micro-batch by CPU time and by wall time, and the share of the
    machine's CPU that others (not this run, its hog included) took meanwhile."""

    samples_per_s: float
    cpu_ms: tuple[float, ...]
    wall_ms: tuple[float, ...]
    others: float


@dataclass(frozen=True)
class Way:
    """How a run is made: `--bind-cores` or not, and whether a hog burns stage 1's core."""

    name: str
    bind: bool
    hog: bool


WAYS = (
    Way("bound", bind=True, hog=False),
    Way("bound, hog", bind=True, hog=True),
    Way("unbound, hog", bind=False, hog=True),
)


def hogged_core_and_pipeline(prefix: str) -> tuple[int, Path]:
    """Stage 1's first core under --bind-cores (where a hog slows it), and the 2-stage GPT
    pipeline prepared in a new work folder named `prefix`..."""
    hog_core = core_block(os.sched_getaffinity(0), 1, STAGES)[0]
    return hog_core, prepare(Path(tempfile.mkdtemp(prefix=prefix)))


def prepare(work: Path) -> Path:
    """Profile, plan and generate the bundled GPT on 2 stages; the pipeline's folder."""
    profile, plan, out = work / "profile.yaml", work / "plan.yaml", work / "out"
    argv = ["vpipe.models.gpt", "-o", str(profile), "-q", "--device", "cpu", "--threads", "1"]
    assert profile_main([*argv, "--batch-size", str(BATCH)]) == 0
    assert (
        plan_main(
            [str(profile), "--gpus", str(STAGES), "--stages", str(STAGES), "-o", str(plan), "-q"]
        )
        == 0
    )
    assert generate_main([str(plan), "-o", str(out), "-q"]) == 0
    return out


def timed_run(out: Path, steps: int, way: Way, hog_core: int) -> Timed:
    """Train `out`'s pipeline `way` once the machine is quiet (for up to a minute)."""
    flags = ["--bind-cores"] if way.bind else []
    await_quiet()
    with measuring_others() as others, burning(hog_core) if way.hog else nullcontext():
        rate = samples_per_s(out, steps, *flags)
    skip = 2 * STAGES  # the pipeline filling, and the first calls' warm-up
    return Timed(
        rate,
        tuple(busy_ms(out / "run", k, skip, by_cpu=True) for k in range(STAGES)),
        tuple(busy_ms(out / "run", k, skip, by_cpu=False) for k in range(STAGES)),
        others.share,
    )


def medians(runs: list[Timed]) -> Timed:
    return Timed(
        statistics.median(r.samples_per_s for r in runs),
        tuple(statistics.median(r.cpu_ms[k] for r in runs) for k in range(STAGES)),
        tuple(statistics.median(r.wall_ms[k] for r in runs) for k in range(STAGES)),
        statistics.median(r.others for r in runs),
    )


def print_table(timed: dict[str, Timed]) -> None:
    base = timed[WAYS[0].name]
    rows = [("samples/s", lambda t: t.samples_per_s)]
    for k in range(STAGES):
        rows.append((f"stage {k} CPU ms", lambda t, k=k: t.cpu_ms[k]))
        rows.append((f"stage {k} wall ms", lambda t, k=k: t.wall_ms[k]))
    header = f"{'':<16} {WAYS[0].name:>8}"
    for way in WAYS[1:]:
        header += f" {way.name:>13} {'ratio':>6}"
    print(header)
    for label, value in rows:
        line = f"{label:<16} {value(base):>8.1f}"
        for way in WAYS[1:]:
            figure = value(timed[way.name])
            line += f" {figure:>13.1f} {figure / value(base):>5.2f}x"
        print(line)
    line = f"{'others took':<16} {base.others:>8.0%}"
    for way in WAYS[1:]:
        line += f" {timed[way.name].others:>13.0%} {'':>6}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="per timed run (asp: micro-batches)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    hog_core, out = hogged_core_and_pipeline("vpipe-bind-cores-")
    runs: dict[str, list[Timed]] = {way.name: [] for way in WAYS}
    for round_ in range(args.rounds):
        for way in WAYS if round_ % 2 == 0 else reversed(WAYS):
            runs[way.name].append(timed_run(out, args.steps, way, hog_core))
    print(
        f"\nCPU, cores {sorted(os.sched_getaffinity(0))}, 2 stages of GPT "
        f"(micro-batch {BATCH}), one thread "
        f"each, hog on core {hog_core}; busy ms per micro-batch; medians of {args.rounds} "
        f"rounds; work files in {out.parent}"
    )
    print_table({name: medians(r) for name, r in runs.items()})


if __name__ == "__main__":
    main()
