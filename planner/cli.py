"""`vpipe-plan`: pick contiguous stage boundaries and per-stage recompute for a profile.

Only the interface exists yet; its issue builds the rest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vpipe.common.cli import not_implemented, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpipe-plan",
        description="Pick contiguous stage boundaries and per-stage recompute for a profile.",
    )
    parser.add_argument("profile", help="profile.yaml written by vpipe-profile")
    parser.add_argument(
        "--gpus", type=int, required=True, help="number of pipeline stages (one device each)"
    )
    parser.add_argument(
        "-o",
        dest="output",
        default="plan.yaml",
        help="where to write the plan (default: plan.yaml)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("vpipe-plan", lambda args: not_implemented(build_parser(), args), argv)


if __name__ == "__main__":
    sys.exit(main())
