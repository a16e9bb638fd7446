"""`vpipe-train`: train the generated pipeline on torch.distributed, one process per stage."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vpipe.common.cli import CommandParser, run_command
from vpipe.common.optimizers import DEFAULT_LR, OPTIMIZERS
from vpipe.common.schedules import SCHEDULES
from vpipe.runtime.settings import LR_SCHEDULES, RunSettings, defaults, learning_rate

CHOICES = {"schedule": SCHEDULES, "optimizer": OPTIMIZERS, "lr_schedule": LR_SCHEDULES}
NUMBERS = {  # setting: (whole number, smallest value, whether the smallest itself is allowed)
    "steps": (True, 1, True),
    "epochs": (True, 1, True),
    "print_every": (True, 1, True),
    "threads": (True, 0, True),
    "checkpoint_every": (True, 0, True),
    "adapt_every": (True, 1, True),
    "lr": (False, 0, False),
    "timeout_s": (False, 0, False),
    "momentum": (False, 0, True),
    "weight_decay": (False, 0, True),
    "warmup_steps": (True, 0, True),
    "min_lr": (False, 0, True),
    "clip_grad_norm": (False, 0, False),
}


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="vpipe-train",
        description=(
            "Train the generated pipeline: one process per stage on this machine (PyTorch's "
            "elastic launcher), or this process's stage when started by torchrun. gloo on CPU, "
            "NCCL on GPU. Writes <pipeline dir>/run/metrics.csv and each stage's final weights."
        ),
    )
    parser.add_argument("pipeline", help="out/pipeline.yaml written by vpipe-gen")
    parser.add_argument(
        "--config",
        help="run settings from a YAML file (keys: the options below, e.g. lr, steps); "
        "flags override it",
    )
    how_long = parser.add_mutually_exclusive_group()
    how_long.add_argument(
        "--epochs",
        type=int,
        help="train this many epochs of the model file's EPOCH_SAMPLES samples",
    )
    how_long.add_argument(
        "--steps",
        type=int,
        help=f"optimizer steps: M micro-batches each under 1f1b/gpipe, one under asp "
        f"(default {defaults()['steps']})",
    )
    parser.add_argument(
        "--schedule", choices=SCHEDULES, help="default: the schedule the plan was made for"
    )
    lrs = ", ".join(f"{name} {lr:g}" for name, lr in DEFAULT_LR.items())
    parser.add_argument(
        "--lr", type=float, help=f"peak learning rate (default by optimizer: {lrs})"
    )
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="default: the plan's")
    parser.add_argument("--momentum", type=float, help=f"default {defaults()['momentum']}")
    parser.add_argument(
        "--weight-decay",
        type=float,
        help="default 0; an L2 term in the gradient, decoupled (applied to the weights) for adamw",
    )
    parser.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        help="after the warm-up: keep --lr, or decay it linearly or along a cosine to --min-lr "
        "at the last step (default constant)",
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        help="steps whose learning rate rises linearly from 0 to --lr (default 0)",
    )
    parser.add_argument(
        "--min-lr", type=float, help="where linear and cosine decay end (default 0)"
    )
    parser.add_argument(
        "--clip-grad-norm",
        type=float,
        help="scale gradients so that their global norm, over every stage, is at most this "
        "(under asp, each stage's own norm; default: no clipping)",
    )
    parser.add_argument(
        "--skip-nonfinite",
        action="store_true",
        default=None,
        help="skip a step whose loss or gradients hold nan or inf (no stage applies it; counted "
        "and reported), as a GradScaler does; default: such a step stops the run (exit 2); "
        "1f1b and gpipe only",
    )
    parser.add_argument("--print-every", type=int, help="steps between loss lines (default 10)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads per process (default: the cores shared out, or with --bind-cores "
        "the process's own)",
    )
    parser.add_argument(
        "--bind-cores",
        action="store_true",
        default=None,
        help="pin each process of this machine to cores of its own, so that one stage's "
        "slowdown is its own: the cores vpipe-train may use, sorted, cut into one contiguous "
        "block of equal size per process (local rank i: block i; any left over unused)",
    )
    parser.add_argument(
        "--timeout-s",
        type=float,
        help="seconds a stage waits on a neighbour before it gives up (default 300)",
    )
    parser.add_argument(
        "--checkpoint-dir", help="where checkpoints go (default: <pipeline dir>/run/checkpoints)"
    )
    parser.add_argument(
        "--checkpoint-every", type=int, help="steps between checkpoints (default: none)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue from the newest checkpoint every stage finished, up to --steps",
    )
    parser.add_argument(
        "--measure-memory",
        action="store_true",
        default=None,
        help="on CPU, count every stage's live tensor bytes and keep the peak for --report "
        "(a Python call per op: slower; on GPU the peak is always taken from CUDA's allocator)",
    )
    parser.add_argument(
        "--switch-plan",
        action="append",
        metavar="STEP:PLAN",
        help="after step STEP, move the running pipeline to PLAN (a vpipe-plan file of the "
        "same profile, stages and processes): the nodes that change stage move between the "
        "live processes, with their weights and optimizer state; repeat for more switches",
    )
    parser.add_argument(
        "--adapt",
        action="store_true",
        default=None,
        help="watch each stage's time per micro-batch against the plan's prediction; when "
        "their proportions drift (a slowed device), re-plan for the measured speeds and "
        "switch while training if that is predicted to pay (decisions in run/adapt.csv)",
    )
    parser.add_argument(
        "--adapt-every", type=int, help="steps between --adapt's checks (default 20)"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="train nothing: report the last run (predicted vs measured time and memory per "
        "stage, the bubble), draw its timeline to <pipeline dir>/run/timeline.png and write "
        "<pipeline dir>/run/report.md",
    )
    return parser


def _report(pipeline_path: str) -> int:
    from rich.console import Console

    from vpipe.codegen.schema import load_pipeline
    from vpipe.common.errors import VpipeError
    from vpipe.runtime.report import build_report, print_report
    from vpipe.runtime.report_markdown import write_markdown
    from vpipe.runtime.settings import load_settings
    from vpipe.runtime.timeline import draw_timeline

    pipeline = load_pipeline(pipeline_path)
    directory = Path(pipeline_path).parent
    run_dir = directory / "run"
    if not (run_dir / "settings.yaml").is_file():
        raise VpipeError(
            f"{run_dir} holds no run to report; train first: vpipe-train {pipeline_path}"
        )
    used = load_settings(
        run_dir / "settings.yaml", f"train again to write it: vpipe-train {pipeline_path}"
    )
    report = build_report(pipeline, directory, used)
    print_report(report, Console())
    timeline = run_dir / "timeline.png"
    draw_timeline(report, [bool(s.recompute) for s in pipeline.stages], timeline)
    print(f"wrote {timeline}")
    write_markdown(report, run_dir / "report.md", timeline)
    print(f"wrote {run_dir / 'report.md'}")
    return 0


def settings_from(args: argparse.Namespace) -> dict:
    """Flags, over the --config file, over the defaults (schedule and optimizer: the plan's)."""
    from vpipe.common.errors import VpipeError
    from vpipe.common.yamlfile import load_yaml

    config = load_yaml(args.config, "run config") if args.config else {}
    if not isinstance(config, dict):
        raise VpipeError(f"{args.config}: a run config is a mapping of option: value")
    known = {**defaults(), "epochs": None}
    del known["steps_per_epoch"]  # derived from epochs
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise VpipeError(
            f"{args.config}: unknown setting {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )
    chosen = {}
    for key, default in known.items():
        flag = getattr(args, key, None)
        chosen[key] = flag if flag is not None else config.get(key, default)
        where = f"--{key.replace('_', '-')}" if flag is not None else f"{args.config}: {key}"
        _check_value(key, chosen[key], default, where)
    if getattr(args, "checkpoint_dir", None) is None and config.get("checkpoint_dir"):
        # a path in a file is relative to that file's directory, as in every file vpipe writes;
        # no fallback to the current directory: the folder may not exist yet
        chosen["checkpoint_dir"] = str(Path(args.config).parent / config["checkpoint_dir"])
    return chosen


def _check_value(key: str, value: object, default: object, where: str) -> None:
    """One setting, from a flag or the run config, before any process starts: of its kind and
    in its range (a bad one would otherwise fail inside a stage, or not at all)."""
    from vpipe.common.errors import VpipeError

    if value is None:
        return
    if key in CHOICES and value not in CHOICES[key]:
        raise VpipeError(f"{where} {value!r}: use one of {', '.join(CHOICES[key])}")
    if key in NUMBERS:
        whole, least, inclusive = NUMBERS[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int if whole else (int, float))
            or not (value >= least if inclusive else value > least)
        ):
            kind = "a whole number" if whole else "a number"
            raise VpipeError(
                f"{where} {value!r}: must be {kind} {'of at least' if inclusive else 'above'} "
                f"{least}"
            )
    elif isinstance(default, (bool, str)) and not isinstance(value, type(default)):
        kind = "true or false" if isinstance(default, bool) else "a path"
        raise VpipeError(f"{where} {value!r}: must be {kind}")


def check_lr_schedule(
    steps: int | None, warmup_steps: int, lr: float | None, min_lr: float
) -> None:
    """The settings that bound each other: a warm-up shorter than the run, a floor below the
    peak rate (the optimizer's default when not given). A bound not known yet (the steps of a
    run given in epochs, the rate of an optimizer the plan names) is not checked."""
    from vpipe.common.errors import VpipeError

    if steps is not None and warmup_steps and warmup_steps >= steps:
        raise VpipeError(
            f"--warmup-steps {warmup_steps}: must be fewer than the run's "
            f"{steps} steps (the learning rate would never reach --lr)"
        )
    if lr is not None and min_lr > lr:
        raise VpipeError(
            f"--min-lr {min_lr:g}: must be at most --lr ({lr:g}), where the decay starts"
        )


def run(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.report:
        return _report(args.pipeline)
    from vpipe.codegen.schema import load_pipeline
    from vpipe.common.errors import VpipeError
    from vpipe.common.modelfile import load_model_file
    from vpipe.runtime.launch import launch

    chosen = settings_from(args)
    epochs = chosen.pop("epochs")
    pipeline = load_pipeline(args.pipeline)
    chosen["schedule"] = chosen["schedule"] or pipeline.schedule
    notes = []
    if chosen["schedule"] != pipeline.schedule:
        same_m = ""
        if chosen["schedule"] != "asp":  # asp steps one micro-batch at a time, whatever M is
            same_m = f"; {chosen['schedule']} runs with its M = {pipeline.microbatches}"
            same_m += ": no two micro-batches overlap" if pipeline.microbatches == 1 else ""
        notes.append(
            f"{args.pipeline} was planned for {pipeline.schedule}; the plan's predictions are "
            f"for that{same_m}; re-plan with --schedule {chosen['schedule']} to plan for it"
        )
    if chosen["optimizer"] is None:
        chosen["optimizer"] = pipeline.optimizer
        _check_value("optimizer", pipeline.optimizer, None, f"{args.pipeline}: optimizer")
    per_step = pipeline.batch_size * (1 if chosen["schedule"] == "asp" else pipeline.microbatches)
    model_file = load_model_file(pipeline.model)
    if pipeline.model_sha256 and model_file.sha256 != pipeline.model_sha256:
        raise VpipeError(
            f"{pipeline.model} changed since it was profiled (sha256 differs); re-run "
            "vpipe-profile, vpipe-plan and vpipe-gen on it"
        )
    model_file.check_deterministic(pipeline.batch_size, 0)
    if epochs is not None:
        samples = model_file.epoch_samples
        if samples is None:
            raise VpipeError(
                f"--epochs: {pipeline.model} defines no EPOCH_SAMPLES (samples per epoch); "
                "define it, or give --steps"
            )
        chosen["steps_per_epoch"] = max(1, samples // per_step)
        chosen["steps"] = epochs * chosen["steps_per_epoch"]
    chosen["lr"] = learning_rate(chosen["lr"], chosen["optimizer"])
    chosen["switch_plan"] = tuple(chosen["switch_plan"] or ())
    settings = RunSettings(pipeline=args.pipeline, **chosen)
    check_lr_schedule(settings.steps, settings.warmup_steps, settings.lr, settings.min_lr)
    launch(settings, notes)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    code = run_command("vpipe-train", run, argv)
    dist = sys.modules.get("torch.distributed")
    if code and dist is not None and dist.is_initialized():
        # a stage that stopped mid-run (a peer lost) leaves gloo's threads waiting on it, and
        # tearing its process group down at exit can abort ("terminate called without an
        # active exception") after the one line that says why: leave as a failed worker does
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
