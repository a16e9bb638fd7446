"""What `vpipe-train` checks before any stage's process starts (or, under torchrun, before this
one joins the others), so that bad input is one line naming the fix rather than a hang or a
traceback from inside a stage: the checkpoints to resume from or not to overwrite, and the
processes torchrun started."""

from __future__ import annotations

import os

from vpipe.codegen.schema import Pipeline
from vpipe.common.errors import VpipeError
from vpipe.runtime import checkpoint
from vpipe.runtime.metrics import read_rows
from vpipe.runtime.settings import RunSettings


def check_tied_checkpoints(settings: RunSettings, pipeline: Pipeline) -> None:
    """Under asp a stage holding a tied copy applies its last updates from sums the owner sent
    earlier, which a checkpoint does not hold: such runs cannot checkpoint yet."""
    if (
        settings.schedule == "asp"
        and pipeline.tied
        and (settings.checkpoint_every or settings.resume)
    ):
        names = ", ".join("/".join(t.names) for t in pipeline.tied)
        raise VpipeError(
            f"checkpoints of asp runs with parameters tied across stages ({names}) are not "
            "supported yet: train without --checkpoint-every/--resume, or with --schedule 1f1b"
        )


def check_checkpoints(settings: RunSettings, pipeline: Pipeline) -> None:
    """Before any process starts: --resume needs a checkpoint of this run short of --steps,
    and a new run never writes over checkpoints an earlier run left."""
    stages = len(pipeline.stages)
    if settings.checkpoints.exists() and not settings.checkpoints.is_dir():
        raise VpipeError(
            f"{settings.checkpoints} is a file, not a folder for checkpoints: choose another "
            "--checkpoint-dir"
        )
    if settings.resume:
        step = checkpoint.newest_complete(settings.checkpoints, stages)
        if step is None:
            raise VpipeError(
                f"--resume: {settings.checkpoints} holds no checkpoint that every stage finished"
            )
        if step >= settings.steps:
            raise VpipeError(
                f"--resume: the newest checkpoint is after step {step}, and --steps is "
                f"{settings.steps}: nothing is left to run; raise --steps"
            )
        wanted = checkpoint.identity(pipeline.plan_sha256, settings.schedule, settings.optimizer)
        replicas = [len(s.ranks) for s in pipeline.stages]
        checkpoint.check_resumable(settings.checkpoints, step, replicas, wanted)
        if (settings.run_dir / "metrics.csv").is_file():  # the resumed run keeps its rows
            read_rows(settings.run_dir / "metrics.csv")
    elif settings.checkpoint_every and checkpoint.holds_any(settings.checkpoints):
        raise VpipeError(
            f"{settings.checkpoints} holds checkpoints of an earlier run: --resume to continue "
            "it, or choose another --checkpoint-dir (or remove that one)"
        )


def check_world(stages: int, processes: int) -> int:
    """Under torchrun, before any stage starts: one process per stage replica, this one's rank
    among them (variables left over in a shell would otherwise wait forever for peers). Its
    rank."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except ValueError:
        raise VpipeError(
            f"RANK {os.environ['RANK']!r} and WORLD_SIZE {os.environ['WORLD_SIZE']!r} must be "
            "whole numbers; start vpipe-train under torchrun, or unset them"
        ) from None
    if not 0 <= rank < world:
        raise VpipeError(
            f"RANK {rank} is not below WORLD_SIZE {world}: torchrun or slurm variables left in "
            "the environment? unset RANK and WORLD_SIZE to let vpipe-train start the stages"
        )
    if world != processes:
        each = "stage" if processes == stages else "stage replica (pipeline.yaml's ranks)"
        raise VpipeError(
            f"this pipeline has {stages} stages and runs as {processes} processes, one per "
            f"{each}; {world} {'was' if world == 1 else 'were'} started (torchrun "
            f"--nproc-per-node {processes}, or --nnodes x --nproc-per-node making {processes})"
        )
    return rank
