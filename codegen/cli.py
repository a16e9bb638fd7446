"""`vpipe-gen`: generate one PyTorch module file per stage and a pipeline config from a plan."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vpipe.common.cli import CommandParser, WholeNumber, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="vpipe-gen",
        description=(
            "Generate one readable PyTorch module file per stage (out/stage_<k>.py), each "
            "stage's initial weights (out/weights/) and the config the runtime reads "
            "(out/pipeline.yaml) from a plan, and a slurm batch script that trains it "
            "(out/vpipe.sbatch). The plan names its profile, the profile its model."
        ),
    )
    parser.add_argument("plan", help="plan.yaml written by vpipe-plan")
    parser.add_argument("-o", dest="output", default="out", help="output directory (default: out/)")
    parser.add_argument(
        "--gpus-per-node",
        type=WholeNumber(1),
        metavar="N",
        help="processes (each on a GPU) per node in out/vpipe.sbatch: the pipeline's P "
        "processes run on P / N nodes, consecutive ranks together; N must divide P "
        "(default: all on one node)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")
    return parser


def run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from vpipe.codegen.generate import generate  # torch loads only when there is work to do
    from vpipe.codegen.slurm import SCRIPT

    pipeline = generate(args.plan, args.output, args.gpus_per_node)
    if not args.quiet:
        for stage in pipeline.stages:
            segments = f", {len(stage.recompute)} recompute segments" if stage.recompute else ""
            print(
                f"{args.output}/{stage.module.split(':')[0]}: {len(stage.inputs)} inputs, "
                f"{len(stage.outputs)} outputs, {len(stage.parameters)} parameters{segments}"
            )
        if pipeline.tied:
            print(f"tied parameters: {', '.join('/'.join(t.names) for t in pipeline.tied)}")
        print(f"wrote {args.output}/pipeline.yaml")
        print(f"wrote {args.output}/{SCRIPT}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("vpipe-gen", run, argv)


if __name__ == "__main__":
    sys.exit(main())
