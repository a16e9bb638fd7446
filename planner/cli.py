"""`vpipe-plan`: pick stage boundaries and per-stage recompute for a profile, write plan.yaml."""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from vpipe.common.cli import CommandParser, Duration, Spread, WholeNumber, run_command
from vpipe.common.errors import VpipeError
from vpipe.common.optimizers import OPTIMIZER_STATE_FACTOR
from vpipe.common.paths import refuse_overwriting
from vpipe.common.plotting import check_plot_path
from vpipe.common.schedules import SCHEDULES
from vpipe.planner.baselines import BASELINE_SPLITS
from vpipe.planner.planning import GIB, SOLVERS, make_hybrid_plan, make_plan
from vpipe.planner.report import plot_plan, print_plan
from vpipe.planner.schema import RECOMPUTE, PlanSettings, save_plan
from vpipe.profiler.schema import load_profile


def _amount(text: str) -> float:
    """A positive number, or inf."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or inf") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _share(text: str) -> float:
    """A share of memory kept free: from 0 up to, not including, 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (got {value:g})")
    return value


GIB_PER_UNIT = {"KiB": 2**-20, "MiB": 2**-10, "GiB": 1.0}


def _memory(text: str) -> float:
    """GiB: a number of GiB, one with a unit (KiB, MiB, GiB: 12MiB), or inf. Small models'
    caps are a few MiB, awkward to write in GiB (0.01171875)."""
    for unit, gib in GIB_PER_UNIT.items():
        if text.endswith(unit):
            number = text.removesuffix(unit).strip()
            try:
                return _amount(number) * gib
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(
                    f"{text!r} is not a positive number of {unit}"
                ) from None
    try:
        return _amount(text)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err}; or give a unit: 12MiB, 1.5GiB") from None


AUTO = 0  # --stages auto: the planner chooses the count


def _stage_count(text: str) -> int:
    """A number of stages, at least 1, or auto (AUTO)."""
    if text == "auto":
        return AUTO
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number or auto") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="vpipe-plan",
        description="Pick contiguous stage boundaries and, per stage, which nodes to recompute, "
        "minimising the time per mini-batch under each device's memory. See docs/planner.md.",
    )
    parser.add_argument("profile", help="profile.yaml written by vpipe-profile")
    parser.add_argument(
        "--gpus",
        type=WholeNumber(1),
        required=True,
        help="devices (processes): the planner chooses how many pipeline stages to make of "
        "them and how many data-parallel replicas each stage gets (see --stages)",
    )
    parser.add_argument(
        "--stages",
        type=_stage_count,
        default="auto",  # argparse passes a string default through `type`
        metavar="S|auto",
        help="pipeline stages. auto (default): the fastest plan on --gpus, whatever its "
        "stage count, the straight pipeline (one process a stage) included; S pins the "
        "count: S = --gpus is a straight pipeline, fewer gives stages data-parallel replicas "
        "(counts may differ per stage). --split, --recompute all and --stage-speeds plan "
        "straight pipelines",
    )
    parser.add_argument(
        "--memory",
        type=_memory,
        default=math.inf,
        metavar="GiB",
        help="memory per device: GiB, or with a unit (12MiB, 1.5GiB), or inf (default inf)",
    )
    parser.add_argument(
        "--headroom",
        type=_share,
        default=0.1,
        help="share of --memory left free for the allocator (default 0.1)",
    )
    parser.add_argument(
        "--bandwidth",
        type=_amount,
        default=math.inf,
        metavar="GB/s",
        help="link bandwidth between stages in GB/s (1e9 B), or inf (default)",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default="asp",
        help="asp (asynchronous 1F1B, weight stashing; default), 1f1b, gpipe",
    )
    parser.add_argument(
        "--microbatches",
        type=WholeNumber(1),
        help="micro-batches per mini-batch for 1f1b/gpipe (default 2 x gpus)",
    )
    parser.add_argument(
        "--optimizer",
        choices=tuple(OPTIMIZER_STATE_FACTOR),
        help="optimizer whose state to count (default: the profile's)",
    )
    parser.add_argument(
        "--solver",
        choices=SOLVERS,
        default="auto",
        help="auto (default: the exact search over the DAG's cuts without a memory cap, any "
        "size; under --memory, that optimum if it fits, else the dp, then the ilp on graphs "
        "of at most 400 nodes x stages), dp (dynamic program over the cuts, with recompute), "
        "or ilp (integer program); the plan states its lower bound and the gap",
    )
    parser.add_argument(
        "--recompute",
        choices=RECOMPUTE,
        default="auto",
        help="auto (default): per stage, the cheapest recompute that fits; never: no "
        "recompute (fails if nothing fits without); all: every stage recomputes its whole "
        "forward (the GPipe habit), to compare",
    )
    parser.add_argument(
        "--split",
        choices=("optimal", *BASELINE_SPLITS),
        default="optimal",
        help="optimal (default): solve for the fastest split; uniform (equal node counts) or "
        "parameter-balanced (DeepSpeed's `parameters`): write the split that rule makes, with "
        "no recompute, to run it against vpipe's",
    )
    parser.add_argument(
        "--stage-speeds",
        type=float,
        nargs="+",
        metavar="X",
        help="per stage, how many times as long its device takes as the profiled one (e.g. "
        "1 2: the second device at half speed; what vpipe-train --adapt measures); plans a "
        "straight pipeline with the dp solver",
    )
    parser.add_argument(
        "--message-ms",
        type=Duration("ms"),
        metavar="MS",
        help="CPU milliseconds each end of a cut spends per message, as vpipe-probe measures "
        "it in the runtime on this machine (default: the profile's link cost, measured between "
        "two threads, which leaves out what the runtime adds: about a third of it on a 2-core "
        "VM); CPU profiles only",
    )
    parser.add_argument(
        "--latency-ms",
        type=Duration("ms"),
        metavar="MS",
        help="milliseconds a message takes from its send to its receive beyond its copies, the "
        "wait it puts on the schedule's dependency chain, as vpipe-probe measures it in the "
        "runtime on this machine (default: the receiving end's cost per message stands for it)",
    )
    parser.add_argument(
        "--jitter",
        type=Spread(),
        default=0.0,
        metavar="SIGMA",
        help="how much a stage's action times vary from one micro-batch to the next on this "
        "machine, the standard deviation of their logarithm, as vpipe-probe measures it in the "
        "runtime (default 0: every action takes its mean); where a stage waits for another, "
        "their slow actions add up: the prediction counts it",
    )
    parser.add_argument("-o", "--output", default="plan.yaml", help="plan file to write")
    parser.add_argument("--plot", metavar="PNG", help="also draw per-stage time and memory")
    parser.add_argument("-q", "--quiet", action="store_true", help="no table")
    return parser


def run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    check_plot_path(args.plot)
    outputs = {"-o": args.output, "--plot": args.plot}
    refuse_overwriting(outputs, {"the profile": args.profile})
    profile = load_profile(args.profile)
    refuse_overwriting(outputs, {"the file the profile was made from": profile.source})
    sha = hashlib.sha256(Path(args.profile).read_bytes()).hexdigest()
    microbatches = args.microbatches
    if microbatches is None:  # not `or`: --microbatches 0 is an error, not the default
        microbatches = 1 if args.schedule == "asp" else 2 * args.gpus
    if args.schedule == "asp" and microbatches != 1:
        raise VpipeError(
            "--microbatches is for --schedule 1f1b or gpipe; asp runs whole mini-batches"
        )
    settings = PlanSettings(
        gpus=args.gpus,
        memory_bytes=args.memory * GIB * (1 - args.headroom),
        bandwidth_gbps=args.bandwidth,
        schedule=args.schedule,
        microbatches=microbatches,
        optimizer=args.optimizer or profile.optimizer,
        headroom=args.headroom,
        recompute=args.recompute,
        stage_speeds=tuple(args.stage_speeds or ()),
        message_ms=args.message_ms,
        latency_ms=args.latency_ms,
        jitter=args.jitter,
    )
    straight_only = _straight_only(args)
    if straight_only and args.stages not in (AUTO, args.gpus):
        raise VpipeError(
            f"{straight_only} plans straight pipelines (one process a stage): leave out --stages"
        )
    if straight_only or args.stages == args.gpus:
        plan, seconds = make_plan(profile, args.profile, sha, settings, args.solver, args.split)
    else:
        stages = None if args.stages == AUTO else args.stages
        plan, seconds = make_hybrid_plan(profile, args.profile, sha, settings, stages, args.solver)
    save_plan(plan, args.output)
    if args.plot:
        plot_plan(plan, args.plot)
    if not args.quiet:
        print_plan(plan, seconds, Console(width=None if sys.stdout.isatty() else 120))
    print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def _straight_only(args: argparse.Namespace) -> str | None:
    """The option asked for that only straight pipelines have, if any: a rule's split and
    recompute-everything are baselines to run against vpipe's, and per-device speeds are
    what `vpipe-train --adapt` re-plans the running (straight) pipeline with."""
    if args.split != "optimal":
        return f"--split {args.split}"
    if args.recompute == "all":
        return "--recompute all"
    if args.stage_speeds:
        return "--stage-speeds"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("vpipe-plan", run, argv)


if __name__ == "__main__":
    sys.exit(main())
