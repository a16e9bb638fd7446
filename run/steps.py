"""From a run config to the four commands it stands for, and running them in order.

Each step is the command a user would type (`vpipe-plan <output>/profile.yaml --gpus 4 -o
<output>/plan.yaml`), run through that command's own entry point, so `vpipe-run` does what the
step-by-step commands do, no more. The output folder holds what `make demo` writes:
profile.yaml, plan.yaml and out/ (the stages, pipeline.yaml and out/run/).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vpipe.codegen.cli import run as gen
from vpipe.common.errors import Failed, VpipeError
from vpipe.planner.cli import run as plan
from vpipe.profiler.cli import run as profile
from vpipe.run.schema import PARSERS, Option, RunConfig
from vpipe.runtime.cli import check_lr_schedule, settings_from
from vpipe.runtime.cli import run as train

COMMANDS = {section: f"vpipe-{section}" for section in PARSERS}
BODIES: dict[str, Callable[[Sequence[str] | None], int]] = {
    "profile": profile,
    "plan": plan,
    "gen": gen,
    "train": train,
}


@dataclass(frozen=True)
class Step:
    section: str  # profile, plan, gen or train
    argv: tuple[str, ...]  # the command's arguments

    @property
    def command(self) -> str:
        return COMMANDS[self.section]

    def __str__(self) -> str:
        return shlex.join([self.command, *self.argv])


def plan_steps(config: RunConfig) -> tuple[Step, ...]:
    """The four commands, each reading what the one before wrote into the output folder."""
    out = Path(config.output)
    files = {
        "profile": [config.model, "-o", str(out / "profile.yaml")],
        "plan": [str(out / "profile.yaml"), "-o", str(out / "plan.yaml")],
        "gen": [str(out / "plan.yaml"), "-o", str(out / "out")],
        "train": [str(out / "out" / "pipeline.yaml")],
    }
    return tuple(
        Step(section, (*files[section], *_flags(section, config.options(section))))
        for section in PARSERS
    )


def check_steps(steps: Sequence[Step], where: str) -> None:
    """Parse every step's arguments, and check the training settings, before any step runs:
    a mistake in the last step should not wait for the first."""
    for step in steps:
        try:
            args = PARSERS[step.section]().parse_args(step.argv)
            if step.section == "train":
                chosen = settings_from(args)
                total = None if chosen["epochs"] is not None else chosen["steps"]
                check_lr_schedule(total, chosen["warmup_steps"], chosen["lr"], chosen["min_lr"])
        except VpipeError as err:
            raise VpipeError(f"{where}: {step.section}: {err}") from None


def run_steps(steps: Sequence[Step]) -> int:
    """Run each step in order, saying which; stop at the first that fails. Its error becomes
    vpipe-run's one line, naming the step (`vpipe-run: error: step 2 (vpipe-plan): ...`): the
    user ran vpipe-run, and one command keeps the one-line promise, not each step."""
    for number, step in enumerate(steps, 1):
        print(f"vpipe-run: step {number} of {len(steps)}: {step}", flush=True)
        where = f"step {number} ({step.command})"
        try:
            BODIES[step.section](list(step.argv))  # returns 0 or raises
        except VpipeError as err:
            raise VpipeError(f"{where}: {err}") from None
        except Failed as err:
            raise Failed(f"{where}: {err}", err.status) from None
    return 0


def _flags(section: str, options: Sequence[Option]) -> list[str]:
    """An option as its command's flags: `--quiet` for true (false: left out, the default),
    `--leaf A --leaf B` for a list, `--batch-size 16` for a value."""
    flag = {
        action.dest: max(action.option_strings, key=len)
        for action in PARSERS[section]()._actions
        if action.option_strings
    }
    argv: list[str] = []
    for option in options:
        if isinstance(option.value, bool):
            argv += [flag[option.name]] if option.value else []
        elif isinstance(option.value, tuple):
            argv += [part for item in option.value for part in (flag[option.name], item)]
        else:
            argv += [flag[option.name], str(option.value)]
    return argv
