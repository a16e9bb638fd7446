"""Start one process per stage (PyTorch's elastic launcher, the machinery behind torchrun), or,
when already started by torchrun, run this process's stage."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from vpipe.codegen.schema import load_pipeline
from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import load_model_file
from vpipe.common.schedules import FORWARD, run_actions, validate
from vpipe.common.yamlfile import save_yaml
from vpipe.runtime import checkpoint
from vpipe.runtime.events import write_events
from vpipe.runtime.executor import StageExecutor
from vpipe.runtime.links import Links
from vpipe.runtime.metrics import Metrics
from vpipe.runtime.optim import Updater
from vpipe.runtime.settings import RunSettings
from vpipe.runtime.tied import check_schedule


def launch(settings: RunSettings) -> None:
    """Train: in this process if torchrun started it, else in one new process per stage."""
    pipeline = load_pipeline(settings.pipeline)
    stages = len(pipeline.stages)
    validate(
        settings.schedule, _actions(settings, stages, pipeline.microbatches), pipeline.microbatches
    )
    check_schedule(pipeline, settings.schedule)
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # started by torchrun
        run_stage(settings)
        return
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # a failing stage prints its own one-line error; the launcher's tracebacks would bury it
    for name in ("torch.distributed.elastic", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        on_this_machine(stages, stage_main, settings)
    except ChildFailedError as err:
        failed = ", ".join(str(rank) for rank in sorted(err.failures))
        raise VpipeError(f"training failed on stage {failed} (its error is above)") from None


def on_this_machine(processes: int, entrypoint, *args) -> None:
    """Run `entrypoint(*args)` in `processes` new processes joined by a c10d rendezvous on
    loopback: what torchrun --standalone does, from Python."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"vpipe-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    elastic_launch(config, entrypoint)(*args)


def _actions(settings: RunSettings, stages: int, microbatches: int):
    """A step is M micro-batches and one update under 1f1b and gpipe; one micro-batch under asp."""
    return run_actions(settings.schedule, stages, microbatches, settings.steps)


def stage_main(settings: RunSettings) -> None:
    """A process the launcher started: run its stage; on bad input, one line and exit 2."""
    try:
        run_stage(settings)
    except VpipeError as err:
        print(f"vpipe-train: error: stage {os.environ.get('RANK')}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_stage(settings: RunSettings) -> None:
    """One process: join the group, build this stage, walk its actions, write results."""
    pipeline = load_pipeline(settings.pipeline)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    stages = len(pipeline.stages)
    if world != stages:
        raise VpipeError(f"{world} processes for {stages} stages; start one process per stage")
    device = torch.device("cpu")
    backend = "gloo"
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        backend = "nccl"
    torch.set_num_threads(settings.threads or max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(backend, timeout=timedelta(seconds=settings.timeout_s))
    print(
        f"Finished initializing process group; backend: {backend}, rank: {rank}, "
        f"world_size: {world}",
        flush=True,
    )
    print(f"[Rank {rank}] Stage: {rank}", flush=True)
    directory = Path(settings.pipeline).parent
    model_file = load_model_file(pipeline.model)
    updater = Updater(settings.optimizer, settings.lr, settings.momentum, settings.weight_decay)
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    actions = _actions(settings, stages, pipeline.microbatches)[rank]
    executor = StageExecutor(
        pipeline,
        directory,
        rank,
        model_file,
        updater,
        Links(pipeline, rank, device, sum(a.kind == FORWARD for a in actions)),
        settings.schedule,
        device,
    )
    first_step = _restore(settings, pipeline, rank, executor) if settings.resume else 0
    actions = [a for a in actions if a.microbatch >= first_step * pipeline.microbatches]
    if settings.checkpoint_every:
        every = settings.checkpoint_every

        def checkpoint_after(updates: int) -> None:
            if updates % every == 0:
                checkpoint.save(
                    settings.checkpoints,
                    updates,
                    rank,
                    executor.weights,
                    updater,
                    pipeline.plan_sha256,
                )

        executor.on_update = checkpoint_after
    dist.barrier()  # every stage built: the clock starts now
    metrics = None
    if rank == stages - 1:  # the stage that computes the loss reports it
        per_step = 1 if settings.schedule == "asp" else pipeline.microbatches
        metrics = Metrics(
            run_dir / "metrics.csv",
            per_step,
            pipeline.batch_size,
            settings.print_every,
            settings.steps,
            settings.steps_per_epoch,
            first_step,
        )
        executor.on_loss = metrics.add
        save_yaml(asdict(settings), run_dir / "settings.yaml")
    start = time.perf_counter()
    log = executor.run(actions)
    seconds = time.perf_counter() - start
    if metrics:
        metrics.close()
    torch.save(executor.final_weights(), run_dir / f"final_stage_{rank}.pt")
    write_events(log.events, run_dir / f"events_stage{rank}.csv")
    save_yaml(
        {"peak_weight_versions": log.peak_versions, "seconds": seconds},
        run_dir / f"stage_{rank}.yaml",
    )
    dist.barrier()
    dist.destroy_process_group()


def _restore(settings: RunSettings, pipeline, rank: int, executor: StageExecutor) -> int:
    """Load this stage's newest complete checkpoint into `executor`; the step it resumes at."""
    step = checkpoint.newest_complete(settings.checkpoints, len(pipeline.stages))
    if step is None:
        raise VpipeError(
            f"--resume: {settings.checkpoints} holds no checkpoint that every stage finished"
        )
    weights = checkpoint.load(
        settings.checkpoints, step, rank, executor.updater, pipeline.plan_sha256
    )
    if set(weights) != set(executor.weights):
        raise VpipeError(f"{settings.checkpoints}: stage {rank}'s weights do not match this stage")
    executor.weights = {n: t.requires_grad_() for n, t in weights.items()}
    if rank == 0:
        print(f"resuming after step {step} from {settings.checkpoints}", flush=True)
    return step


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
