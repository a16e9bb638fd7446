"""`vpipe-train`: train the generated pipeline on torch.distributed, one process per stage."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vpipe.common.cli import run_command

SCHEDULES = ("asp", "1f1b", "gpipe")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpipe-train",
        description=(
            "Train the generated pipeline: one process per stage on this machine (PyTorch's "
            "elastic launcher), or this process's stage when started by torchrun. gloo on CPU, "
            "NCCL on GPU. Writes <pipeline dir>/run/metrics.csv and each stage's final weights."
        ),
    )
    parser.add_argument("pipeline", help="out/pipeline.yaml written by vpipe-gen")
    parser.add_argument(
        "--steps",
        type=int,
        default=10,
        help="optimizer steps: M micro-batches each under 1f1b/gpipe, one under asp (default 10)",
    )
    parser.add_argument(
        "--schedule", choices=SCHEDULES, help="default: the schedule the plan was made for"
    )
    parser.add_argument("--lr", type=float, default=0.01, help="learning rate (default 0.01)")
    parser.add_argument(
        "--optimizer", choices=("sgd", "momentum", "adam"), help="default: the plan's"
    )
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--print-every", type=int, default=10, help="steps between loss lines")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process")
    return parser


def _run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from vpipe.codegen.schema import load_pipeline
    from vpipe.common.errors import VpipeError
    from vpipe.runtime.launch import RunSettings, launch

    if args.steps < 1 or args.lr <= 0:
        raise VpipeError("--steps must be at least 1 and --lr positive")
    pipeline = load_pipeline(args.pipeline)
    launch(
        RunSettings(
            pipeline=args.pipeline,
            schedule=args.schedule or pipeline.schedule,
            steps=args.steps,
            lr=args.lr,
            optimizer=args.optimizer or pipeline.optimizer,
            weight_decay=args.weight_decay,
            print_every=args.print_every,
            threads=args.threads,
        )
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("vpipe-train", _run, argv)


if __name__ == "__main__":
    sys.exit(main())
