"""`vpipe-train`: train the generated pipeline on torch.distributed.

Only the interface exists yet; its issue builds the rest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vpipe.common.cli import not_implemented, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpipe-train", description="Train the generated pipeline on torch.distributed."
    )
    parser.add_argument("pipeline", help="out/pipeline.yaml written by vpipe-gen")
    parser.add_argument(
        "--steps", type=int, default=10, help="number of mini-batches to train (default: 10)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("vpipe-train", lambda args: not_implemented(build_parser(), args), argv)


if __name__ == "__main__":
    sys.exit(main())
