"""--adapt against a slowed stage: throughput after adapting vs without, as a ratio in one run.

    python benchmarks/adapt.py [--steps 600] [--every 50] [--rounds 2]

Profiles the bundled GPT (micro-batch 8) with one thread, plans 2 stages (asp) and generates
them (as benchmarks/bind_cores.py does). Each round trains them twice with `--bind-cores` and a
hog of benchmarks/burner.py on stage 1's core from the start: without `--adapt`, and with
`--adapt --adapt-every EVERY`, in turn and in reverse order every other round; then once with
no hog. Per round it prints samples/s of the runs over the same steps (from the adapting run's
switch, once the pipeline has filled again, to the end), the ratio adapted / without (issue
19's target: 1.25x or more, for a stage at half speed), the ceiling no hog / without (how much
the hog cost: what adapting could win back at most), the
step of the switch, the seconds from the run's start to the check that switched (detect), what
that check took (measuring, planning and codegen, on rank 0), what the switch took (transfer
and rebuild), the speeds the planner was given, and its predicted gain for the new split
(the running plan's slowest stage over the new plan's, at those speeds).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from bind_cores import BATCH, STAGES, hogged_core_and_pipeline
from burner import burning
from measuring import await_quiet, measuring_others, samples_per_s

from vpipe.runtime.layoutlog import DECISIONS, SWITCHES, AdaptDecision, SwitchRecord
from vpipe.runtime.rowlog import read_rows_as

REFILL = 2 * STAGES  # steps after a switch before the new split runs steadily


@dataclass(frozen=True)
class Run:
    """One timed run: when each step ended (seconds since the start), and what --adapt did."""

    ended_s: dict[int, float]
    decisions: tuple[AdaptDecision, ...]
    switches: tuple[SwitchRecord, ...]
    others: float  # the machine's CPU share others took meanwhile

    def samples_per_s(self, first: int, last: int) -> float:
        """Over steps first .. last (asp: a step is one micro-batch)."""
        return BATCH * (last - first) / (self.ended_s[last] - self.ended_s[first])


@dataclass(frozen=True)
class Round:
    without: Run
    adapted: Run
    free: Run  # no hog, no --adapt: what no split under the hog can beat

    @property
    def switch(self) -> SwitchRecord | None:
        return self.adapted.switches[0] if self.adapted.switches else None

    @property
    def window(self) -> tuple[int, int]:
        last = max(self.without.ended_s)
        start = self.switch.step if self.switch else 0
        return min(start + REFILL, last - 1), last

    @property
    def ratio(self) -> float:
        return self.adapted.samples_per_s(*self.window) / self.without.samples_per_s(*self.window)

    @property
    def ceiling(self) -> float:
        """How much faster the pipeline runs without the hog than with it: the most that
        adapting to the hog could gain."""
        return self.free.samples_per_s(*self.window) / self.without.samples_per_s(*self.window)


def timed_run(out: Path, steps: int, hog_core: int | None, every: int | None) -> Run:
    """One run of `steps`, with a hog on `hog_core` (None: none), adapting every `every`
    steps (None: not)."""
    flags = ["--bind-cores"] + (["--adapt", "--adapt-every", str(every)] if every else [])
    await_quiet()
    hog = burning(hog_core) if hog_core is not None else contextlib.nullcontext()
    with measuring_others() as others, hog:
        samples_per_s(out, steps, *flags)
    run = out / "run"
    with open(run / "metrics.csv") as file:
        ended = {int(row["step"]): float(row["elapsed_s"]) for row in csv.DictReader(file)}
    return Run(
        ended,
        read_rows_as(run / DECISIONS, AdaptDecision),
        read_rows_as(run / SWITCHES, SwitchRecord),
        others.share,
    )


def print_rounds(rounds: list[Round]) -> None:
    print(
        f"{'round':<6} {'steps':>9} {'without':>8} {'adapted':>8} {'ratio':>6} {'no hog':>7} "
        f"{'ceiling':>7} {'switch':>6} "
        f"{'n':>2} "
        f"{'detect s':>8} {'check s':>7} {'move ms':>7} {'speeds':>11} {'predicted':>9} "
        f"{'others':>6}"
    )
    for k, r in enumerate(rounds):
        first, last = r.window
        chosen = next((d for d in r.adapted.decisions if d.switched), None)
        switch = r.switch
        detect = r.adapted.ended_s[chosen.step] if chosen else None
        print(
            f"{k:<6} {f'{first}-{last}':>9} {r.without.samples_per_s(first, last):>8.1f} "
            f"{r.adapted.samples_per_s(first, last):>8.1f} {r.ratio:>5.2f}x "
            f"{r.free.samples_per_s(first, last):>7.1f} {r.ceiling:>6.2f}x "
            f"{switch.step if switch else '—':>6} {len(r.adapted.switches):>2} "
            f"{f'{detect:.1f}' if detect is not None else '—':>8} "
            f"{f'{chosen.seconds:.2f}' if chosen else '—':>7} "
            f"{f'{switch.seconds * 1e3:.0f}' if switch else '—':>7} "
            f"{chosen.speeds if chosen else '—':>11} "
            f"{f'{chosen.current_ms / chosen.planned_ms:.2f}x' if chosen else '—':>9} "
            f"{max(r.without.others, r.adapted.others):>6.0%}"
        )
    print(f"median ratio: {statistics.median(r.ratio for r in rounds):.2f}x (target 1.25x)")
    print("--adapt's checks (run/adapt.csv), by round:")
    for k, r in enumerate(rounds):
        for d in r.adapted.decisions:
            print(f"  {k}: after step {d.step}: ratios {d.ratios}; {d.reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600, help="per run (asp: micro-batches)")
    parser.add_argument("--every", type=int, default=50, help="--adapt-every")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    hog_core, out = hogged_core_and_pipeline("vpipe-adapt-")
    rounds = []
    for k in range(args.rounds):
        order = (None, args.every) if k % 2 == 0 else (args.every, None)
        runs = {every: timed_run(out, args.steps, hog_core, every) for every in order}
        free = timed_run(out, args.steps, None, None)
        rounds.append(Round(runs[None], runs[args.every], free))
    print(
        f"\nCPU, cores {sorted(os.sched_getaffinity(0))}, 2 stages of GPT "
        f"(micro-batch {BATCH}, asp), one thread "
        f"each, --bind-cores, hog on core {hog_core} from the start; samples/s over the steps "
        f"after the switch; work files in {out.parent}"
    )
    print_rounds(rounds)


if __name__ == "__main__":
    main()
