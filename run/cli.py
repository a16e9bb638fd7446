"""`vpipe-run`: profile, plan, generate and train from one config file, step by step."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vpipe.common.cli import CommandParser, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="vpipe-run",
        description=(
            "Run vpipe-profile, vpipe-plan, vpipe-gen and vpipe-train in turn with the options a "
            "run config gives (configs/bert_4vpipe.yml), writing into the folder it names: "
            "profile.yaml, plan.yaml and out/ (the stages, pipeline.yaml, out/run/). Prints "
            "each step's command first, so any step can be run again by hand."
        ),
    )
    parser.add_argument(
        "config",
        help="run config: schema_version, model, output, and the profile, plan, gen and train "
        "options (keys: each command's options with _ for -)",
    )
    return parser


def run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from vpipe.run.schema import load_run_config
    from vpipe.run.steps import check_steps, plan_steps, run_steps

    config = load_run_config(args.config)
    steps = plan_steps(config)
    check_steps(steps, args.config)
    Path(config.output).mkdir(parents=True, exist_ok=True)
    return run_steps(steps)


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("vpipe-run", run, argv)


if __name__ == "__main__":
    sys.exit(main())
