"""`vpipe-gen`: generate one PyTorch module file per stage and a pipeline config from a plan.

Only the interface exists yet; its issue builds the rest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from vpipe.common.cli import not_implemented, run_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpipe-gen",
        description="Generate one PyTorch module file per stage and a pipeline config from a plan.",
    )
    parser.add_argument("plan", help="plan.yaml written by vpipe-plan")
    parser.add_argument("-o", dest="output", default="out", help="output directory (default: out/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("vpipe-gen", lambda args: not_implemented(build_parser(), args), argv)


if __name__ == "__main__":
    sys.exit(main())
