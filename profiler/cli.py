"""`vpipe-profile`: capture a model as a graph and measure every node, or import a PipeDream
profile. Writes profile.yaml and prints a summary table."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vpipe.common.cli import CommandParser, Duration, WholeNumber, run_command
from vpipe.common.errors import VpipeError
from vpipe.common.optimizers import OPTIMIZERS
from vpipe.common.paths import names_file, refuse_overwriting
from vpipe.common.plotting import check_plot_path
from vpipe.profiler.schema import Profile, save_profile

DEFAULT_BATCH = 8


def _visible_device(text: str) -> str:
    """cpu, or cuda when torch sees a GPU: checked as the arguments are parsed, which
    `vpipe-run` does for every step before the first runs."""
    if text == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                "no CUDA GPU is visible to PyTorch on this machine; use --device cpu"
            )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="vpipe-profile",
        description="Capture a model (a model.py file or an importable module such as "
        "vpipe.models.gpt) as a graph of its layers (torch.fx, else torch.export: Hugging Face "
        "models as they are) and measure every node's forward and backward time and memory. "
        "See docs/model-file.md for what the model file defines.",
    )
    parser.add_argument("model", nargs="?", help="model file (path/to/model.py) or module name")
    parser.add_argument("-o", "--output", default="profile.yaml", help="profile file to write")
    parser.add_argument(
        "--batch-size",
        type=WholeNumber(1),
        help=f"micro-batch size (default {DEFAULT_BATCH}); with --import-pipedream, "
        "the batch the file was measured at, if known",
    )
    parser.add_argument(
        "--device",
        type=_visible_device,
        choices=("cpu", "cuda"),
        help="where to measure (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="optimizer whose state bytes to count (default sgd)",
    )
    parser.add_argument(
        "--leaf",
        action="append",
        default=[],
        metavar="CLASS",
        help="keep submodules of this class whole (repeatable); use it for a module "
        "that branches on its input's values, or to profile a block as one node",
    )
    parser.add_argument(
        "--repeats",
        type=WholeNumber(1),
        default=5,
        help="timed runs per node (on a CPU whole passes, each node's mean kept; on CUDA the "
        "node alone, its median)",
    )
    parser.add_argument(
        "--warmup", type=WholeNumber(0), default=2, help="untimed runs per node first"
    )
    parser.add_argument(
        "--min-time",
        type=Duration("seconds"),
        default=0.1,
        metavar="SECONDS",
        help="on a CPU, the least time the timed runs take together: more than --repeats on a "
        "small model, and --min-time 2 on a machine whose speed swings over seconds (default 0.1; "
        "0: exactly --repeats)",
    )
    parser.add_argument(
        "--seed",
        type=WholeNumber(0, 2**62 - 1),  # torch.manual_seed's range, after each stage adds its rank
        default=0,
        help="torch seed before build_model()",
    )
    parser.add_argument(
        "--threads",
        type=WholeNumber(0),
        default=0,
        help="CPU threads to measure with (default 0: torch's default, all cores); give what "
        "each stage will have, e.g. vpipe-train's --threads",
    )
    parser.add_argument(
        "--beside",
        type=WholeNumber(0),
        default=0,
        metavar="N",
        help="on a CPU, time while N other processes train the model, as the other stages of "
        "a pipeline on this machine compute beside each stage: give stages - 1 (default 0)",
    )
    parser.add_argument("--plot", metavar="PNG", help="also draw per-node time and memory bars")
    parser.add_argument(
        "--import-pipedream",
        metavar="GRAPH_TXT",
        help="convert a PipeDream graph.txt profile instead of measuring a model",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or table")
    return parser


def _measure(args: argparse.Namespace, console: Console) -> Profile:
    from vpipe.common.modelfile import load_model_file
    from vpipe.profiler.profiling import ProfileSettings, profile_model

    model_file = load_model_file(args.model)
    settings = ProfileSettings(
        batch_size=DEFAULT_BATCH if args.batch_size is None else args.batch_size,
        device=args.device,
        optimizer=args.optimizer,
        leaves=tuple(args.leaf),
        warmup=args.warmup,
        repeats=args.repeats,
        min_time_s=args.min_time,
        seed=args.seed,
        threads=args.threads,
        beside=args.beside,
    )
    columns = (
        TextColumn("profiling {task.fields[node]:<24}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True, disable=args.quiet) as bar:
        task = bar.add_task("profile", total=None, node="")
        return profile_model(
            model_file,
            settings,
            progress=lambda name: bar.update(task, advance=1, node=name),
            total=lambda n: bar.update(task, total=n),
        )


def run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    check_plot_path(args.plot)
    model = args.model if args.model and names_file(args.model) else None
    refuse_overwriting(
        {"-o": args.output, "--plot": args.plot},
        {"the model file": model, "the PipeDream profile": args.import_pipedream},
    )
    if args.import_pipedream:
        if args.model:
            raise VpipeError("give either a model or --import-pipedream GRAPH_TXT, not both")
        from vpipe.profiler.pipedream import import_pipedream

        profile = import_pipedream(
            args.import_pipedream, optimizer=args.optimizer, batch_size=args.batch_size
        )
    elif args.model:
        profile = _measure(args, console)
    else:
        raise VpipeError(
            "no model given; run vpipe-profile path/to/model.py (or a module name "
            "such as vpipe.models.gpt), or --import-pipedream graph.txt"
        )
    save_profile(profile, args.output)
    if args.plot:
        from vpipe.profiler.report import plot_profile

        plot_profile(profile, args.plot)
    if not args.quiet:
        from vpipe.profiler.report import print_summary

        # a pipe or a log file gets a table wide enough to read, not rich's 80 columns
        print_summary(profile, Console(width=None if sys.stdout.isatty() else 120))
    print(f"wrote {args.output}" + (f" and {args.plot}" if args.plot else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("vpipe-profile", run, argv)


if __name__ == "__main__":
    sys.exit(main())
