"""`vpipe-probe`: what a message between pipeline stages costs each end's process in the
runtime on this machine, the figure `vpipe-plan --message-ms` takes.

The profile's link cost (profiler/linkcost.py) times gloo messages between two threads of one
process: the copies of the bytes. A stage of a running pipeline pays more per message: the
receives it posts ahead, blocking and waking, the Python around every send, and the steps of
the runtime's loop that a second stage repeats. On a 2-vCPU VM that came to 0.12-0.18 ms a
message where the two threads measured 0.04 (docs/benchmarks.md), and a plan that counts 0.04
over-predicts small stages' throughput by up to 1.7x.

The probe measures it with the runtime itself: it trains a model whose two layers cost next to
nothing (`vpipe.models.probe`) as one stage and as two, one process a stage, one thread each,
and shares the CPU time the two stages spend per micro-batch beyond the one stage out among
the messages the cut adds: at each end, an activation and its gradient per tensor it carries.

A message also takes time from its send to its receive, on top of that CPU work: the wait it
puts on the schedule's chain (`vpipe-plan --latency-ms`). The two stages, run under asp, loop
through each other: a micro-batch's backward on the first stage waits for the second's, which
waited for the first's forward, so in its steady state the pipeline's time per micro-batch P
is (t0 + t1 + 2 x latency) / 2 while neither stage alone is slower (t0, t1: each stage's CPU
time per micro-batch). The probe's stages are nearly even, so it reads the latency off its
run: P - (t0 + t1) / 2, about 0.075 ms a message one way on a 2-vCPU VM, where each end's CPU
per message is 0.16-0.2 ms.

The same run gives how much a stage's action times vary from one micro-batch to the next (what
`vpipe-plan --jitter` takes): each forward's and each backward's CPU time against the median of
its kind around it (ten either side, so that the machine's slower drift over seconds is left
out), as the standard deviation of the logarithm of their ratio, the mean over both stages'
forwards and backwards: 0.14-0.19 on a 2-vCPU VM. The probe's actions, a tenth of a
millisecond, vary more than larger ones (0.07-0.15 there, 0.3-8 ms actions), and their spread
stands for the larger actions' heavier tails: fed each run's measured mean action times, the
pipeline model gave four models' 2-stage asp pipelines 0.94-1.03 of their measured pace with the
probe's spread, 0.91-1.01 with each run's own, 0.89-0.99 at the means (docs/benchmarks.md).

What a stage pays per micro-batch beside its compute depends on the schedule: under asp it
updates after every micro-batch, under 1f1b and gpipe once a step. `--schedule` measures the
cost per message under the schedule the plan will run (the probe model trained as one stage and
as two under it too): 0.15-0.16 ms under 1f1b where asp's pair gave 0.17-0.19.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vpipe.codegen.cli import run as generate
from vpipe.codegen.schema import load_pipeline
from vpipe.common.cli import CommandParser, WholeNumber, run_command
from vpipe.common.errors import Failed, VpipeError
from vpipe.common.schedules import BACKWARD, FORWARD, SCHEDULES
from vpipe.planner.cli import run as plan
from vpipe.profiler.cli import run as profile
from vpipe.profiler.schema import load_profile
from vpipe.runtime.cli import run as train
from vpipe.runtime.events import read_events

MODEL = "vpipe.models.probe"
BATCH_SIZE = 2
WARMUP = 20  # micro-batches left out at the start of each run: the pipeline filling, caches
AROUND = 10  # actions either side of one whose median it is compared with (`action_jitter`)


@dataclass(frozen=True)
class ProbeResult:
    """The probe's runs and the per-message cost they give."""

    one_stage_ms: float  # CPU milliseconds per micro-batch, the probe model as one stage
    two_stage_ms: tuple[float, float]  # the same per stage, split in two
    messages: int  # per micro-batch, that the cut adds, both ends counted
    profiled_ms: float  # the profile's cost per message (two threads), to compare
    # the two stages under asp: wall milliseconds per micro-batch of their steady state, and
    # their mean CPU milliseconds per micro-batch (under asp, the same runs as the above)
    period_ms: float
    loop_ms: float
    jitter: float  # how much the asp pair's action times vary (`action_jitter`)
    schedule: str = "asp"  # the schedule of the runs the cost per message comes from

    @property
    def message_ms(self) -> float:
        """Each end's CPU milliseconds per message (what `--message-ms` takes): the second
        stage's and the messages' cost, shared out among the messages. At least 0: noise
        could take a run below its one-stage twin only on a machine too busy to measure."""
        return max(0.0, (sum(self.two_stage_ms) - self.one_stage_ms) / self.messages)

    @property
    def latency_ms(self) -> float:
        """A message's time from send to receive beyond each end's CPU work, one way (what
        `--latency-ms` takes): the two stages' time per micro-batch beyond their mean CPU time
        (module docstring). At least 0: a stage that was alone the slower hides it."""
        return max(0.0, self.period_ms - self.loop_ms)


def measure(
    folder: Path,
    steps: int,
    say: Callable[[str], None] = print,
    schedule: str = "asp",
    microbatches: int = 4,
) -> ProbeResult:
    """Profile the probe model into `folder`, then train it for `steps` micro-batches as one
    stage and as two under asp, and under `schedule` too (`microbatches` a step) if it is
    another, saying each step (`say`); what the steps print goes to probe.log there."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "probe.log"
    log.write_text("")
    profiled = folder / "profile.yaml"
    say(f"profiling {MODEL} (batch {BATCH_SIZE}, one thread)")
    argv = [MODEL, "-o", str(profiled), "-q", "--device", "cpu", "--threads", "1"]
    _step(log, profile, [*argv, "--batch-size", str(BATCH_SIZE)])
    link = load_profile(profiled).link
    if link is None:
        raise VpipeError("gloo could not start on this machine: there are no messages to time")
    loop = _pair(log, profiled, folder, "asp", 1, steps, say)
    runs = (
        loop
        if schedule == "asp"
        else _pair(log, profiled, folder, schedule, microbatches, steps, say)
    )
    cut = load_pipeline(folder / "stages2" / "pipeline.yaml").stages[0].outputs
    return ProbeResult(
        one_stage_ms=runs.one_ms,
        two_stage_ms=runs.two_ms,
        messages=2 * 2 * len(cut),  # the probe's tensors are floats: each has a gradient
        profiled_ms=link.message_ms,
        period_ms=_period_ms(folder / "stages2" / "run" / "events_stage0.csv"),
        loop_ms=sum(loop.two_ms) / 2,
        jitter=statistics.mean(
            action_jitter(folder / "stages2" / "run" / f"events_stage{k}.csv", kind)
            for k in range(2)
            for kind in (FORWARD, BACKWARD)
        ),
        schedule=schedule,
    )


@dataclass(frozen=True)
class _Pair:
    """The probe model's CPU milliseconds per micro-batch under one schedule: as one stage,
    and per stage as two."""

    one_ms: float
    two_ms: tuple[float, float]


def _pair(
    log: Path,
    profiled: Path,
    folder: Path,
    schedule: str,
    microbatches: int,
    steps: int,
    say: Callable[[str], None],
) -> _Pair:
    """Per stage, the mean CPU milliseconds per micro-batch of the probe model trained for
    `steps` micro-batches under `schedule` as one stage, then as two (into stages1 and stages2
    of `folder` under asp, else of folder/<schedule>)."""
    where = folder if schedule == "asp" else folder / schedule
    where.mkdir(exist_ok=True)
    busy = []
    for stages in (1, 2):
        say(
            f"training it as {stages} stage{'s' * (stages > 1)} for {steps} micro-batches "
            f"under {schedule}"
        )
        out, plan_file = where / f"stages{stages}", where / f"stages{stages}.yaml"
        sync = [] if schedule == "asp" else ["--microbatches", str(microbatches)]
        _step(
            log,
            plan,
            [str(profiled), "--gpus", str(stages), "--stages", str(stages)]
            + ["--schedule", schedule, *sync, "-o", str(plan_file), "-q"],
        )
        _step(log, generate, [str(plan_file), "-o", str(out), "-q"])
        rounds = str(max(1, steps // microbatches))  # vpipe-train counts steps of M
        _step(log, train, [str(out / "pipeline.yaml"), "--steps", rounds, "--threads", "1"])
        busy.append([_busy_ms(out / "run" / f"events_stage{k}.csv") for k in range(stages)])
    return _Pair(busy[0][0], (busy[1][0], busy[1][1]))


def _step(log: Path, command: Callable[[Sequence[str] | None], int], argv: list[str]) -> None:
    """Run one command with this process's standard output, and its stage processes' (they
    inherit it), added to `log`; a failed step has said why on stderr."""
    sys.stdout.flush()
    kept = os.dup(1)
    with open(log, "a") as file:
        os.dup2(file.fileno(), 1)
        try:
            status = command(argv)
        finally:
            sys.stdout.flush()
            os.dup2(kept, 1)
            os.close(kept)
    if status != 0:
        raise Failed(f"the probe's step failed (its output: {log})", status)


def _busy_ms(events: Path) -> float:
    """Mean CPU milliseconds a stage spent per micro-batch (its forward and its backward),
    after the warm-up and before the last two, which the run's end may cut short."""
    per_microbatch: dict[int, float] = {}
    for e in read_events(events):
        per_microbatch[e.microbatch] = per_microbatch.get(e.microbatch, 0.0) + e.cpu_s
    last = max(per_microbatch)
    steady = [s for i, s in per_microbatch.items() if WARMUP <= i < last - 1]
    if not steady:
        raise VpipeError(f"--steps: too few micro-batches to time past the first {WARMUP}")
    return statistics.mean(steady) * 1e3


def action_jitter(events: Path, kind: str) -> float:
    """How much a stage's actions of one kind (F or B) vary from one micro-batch to the next:
    the standard deviation of log(CPU time / the median of the AROUND actions of that kind either
    side), after the warm-up. A machine whose speed drifts over seconds moves the medians with
    it; what is left is what one action does differently from its neighbours."""
    times = [e.cpu_s for e in read_events(events) if e.action == kind and e.microbatch >= WARMUP]
    if len(times) < 2 * AROUND + 2:
        raise VpipeError(f"--steps: too few micro-batches to time past the first {WARMUP}")
    return statistics.pstdev(
        math.log(times[i] / statistics.median(times[i - AROUND : i + AROUND + 1]))
        for i in range(AROUND, len(times) - AROUND)
    )


def _period_ms(events: Path) -> float:
    """Wall milliseconds per micro-batch of a stage's steady state: between the ends of its
    backwards, after the warm-up and before the last two (as `_busy_ms`)."""
    ends = sorted(e.end_s for e in read_events(events) if e.action != FORWARD)
    steady = ends[WARMUP : len(ends) - 2]
    if len(steady) < 2:
        raise VpipeError(f"--steps: too few micro-batches to time past the first {WARMUP}")
    return (steady[-1] - steady[0]) / (len(steady) - 1) * 1e3


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="vpipe-probe",
        description="Measure what a message between pipeline stages costs each end's CPU in "
        "vpipe's runtime on this machine (gloo, one thread a stage), and print the "
        "vpipe-plan --message-ms that counts it. Trains a tiny model as one stage and as two; "
        "takes about half a minute. See docs/commands.md.",
    )
    parser.add_argument(
        "--steps",
        type=WholeNumber(WARMUP + 10),
        default=2000,
        help=f"micro-batches each run trains (default 2000; at least {WARMUP + 10})",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="asp",
        help="the schedule to measure the cost per message under, as the plan will run it "
        "(default asp; the latency is always read off asp's loop): a synchronous stage makes "
        "one update a step, not one a micro-batch, and pays less per micro-batch beside its "
        "compute (0.15-0.16 ms a message under 1f1b, 0.17-0.19 under asp, on a 2-vCPU VM)",
    )
    parser.add_argument(
        "--microbatches",
        type=WholeNumber(1),
        default=4,
        help="micro-batches a step under 1f1b or gpipe, as the plan's (default 4: vpipe-plan's "
        "for 2 GPUs)",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="write the probe's profile, plans, stages and run logs into DIR (default: a "
        "temporary folder, removed)",
    )
    return parser


def run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.keep:
            folder = Path(args.keep)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vpipe-probe-")))
        result = measure(
            folder,
            args.steps,
            say=lambda line: print(f"vpipe-probe: {line}"),
            schedule=args.schedule,
            microbatches=args.microbatches,
        )
    two = " + ".join(f"{ms:.3f}" for ms in result.two_stage_ms)
    print(
        f"{result.schedule}: one stage: {result.one_stage_ms:.3f} ms of CPU a micro-batch; "
        f"two: {two} ms"
    )
    print(
        f"a message costs each end {result.message_ms:.4f} ms in the runtime "
        f"(the profile's two-thread figure: {result.profiled_ms:.4f} ms) and takes "
        f"{result.latency_ms:.4f} ms from send to receive beyond that; a stage's action "
        f"times vary by {result.jitter:.3f} (the log's standard deviation)"
    )
    print(
        f"plan with: vpipe-plan <profile> --message-ms {result.message_ms:.4f} "
        f"--latency-ms {result.latency_ms:.4f} --jitter {result.jitter:.3f}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("vpipe-probe", run, argv)


if __name__ == "__main__":
    sys.exit(main())
