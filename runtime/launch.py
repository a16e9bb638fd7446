"""Start one process per stage replica (PyTorch's elastic launcher, the machinery behind
torchrun), or, when already started by torchrun, run this process's stage."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from vpipe.codegen.schema import Pipeline, load_pipeline
from vpipe.common.allocator import keep_freed_memory
from vpipe.common.cli import print_whole
from vpipe.common.errors import VpipeError
from vpipe.common.memory import LiveBytes
from vpipe.common.modelfile import load_model_file
from vpipe.common.replicas import (
    run_lengths,
    validate_replicas,
)
from vpipe.common.runlock import run_lock
from vpipe.common.schedules import run_actions, validate
from vpipe.common.stages import edits_blamed
from vpipe.runtime import checkpoint, failures, forkstart
from vpipe.runtime.adapt import Adapter, BusyWatch, check_adaptable
from vpipe.runtime.cores import bind_own_cores, check_enough_cores, shown, threads_cores
from vpipe.runtime.events import ActionEvent, EventLog
from vpipe.runtime.executor import StageExecutor
from vpipe.runtime.layoutlog import DECISIONS, SWITCHES
from vpipe.runtime.links import Channels, Links
from vpipe.runtime.loopthreads import idle_loop_threads
from vpipe.runtime.metrics import Metrics
from vpipe.runtime.nonfinite import check_supported
from vpipe.runtime.placement import (
    Placement,
    check_ranks,
    placement,
    replicated,
    world_size,
)
from vpipe.runtime.preflight import check_checkpoints, check_tied_checkpoints, check_world
from vpipe.runtime.replicas import ReplicaGroup, check_replicated, weights_digest
from vpipe.runtime.segments import (
    build_executor,
    first_actions,
    following_segment,
    run_segments,
    segment_actions,
    switched_executor,
    updater_for,
    wait_for_every_stage,
)
from vpipe.runtime.settings import RunSettings, microbatches_per_step, save_settings
from vpipe.runtime.stagelog import StageLog, save_stage_log
from vpipe.runtime.switching import (
    segment_resumed,
)


def launch(settings: RunSettings, notes: Sequence[str] = ()) -> None:
    """Train: in this process if torchrun started it, else in one new process per stage.
    `notes` (`vpipe-train: note: ...` lines) are printed once every check before the start has
    passed: a refused run says one line, its error."""
    pipeline = load_pipeline(settings.pipeline)
    stages, world = len(pipeline.stages), world_size(pipeline)
    check_ranks(pipeline)
    check_replicated(settings, pipeline)
    replicas = [len(s.ranks) for s in pipeline.stages]
    # the schedules repeat themselves after a few steps: checking a short run checks a long one
    # (of a length that gives every replica the same updates, as --steps must)
    every = run_lengths(settings.schedule, replicas)
    checked = min(settings.steps, -(-(2 * world + 2) // every) * every)
    if replicated(pipeline):
        validate_replicas(settings.schedule, replicas, pipeline.microbatches, checked)
    else:
        validate(
            settings.schedule,
            run_actions(settings.schedule, stages, pipeline.microbatches, checked),
            pipeline.microbatches,
            [t.stages for t in pipeline.tied],
        )
    check_tied_checkpoints(settings, pipeline)
    segments = run_segments(settings, pipeline)
    check_adaptable(settings, segments)
    check_checkpoints(settings, segment_resumed(segments, settings).pipeline)
    check_supported(settings.schedule, settings.skip_nonfinite)
    started_by_torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    if settings.bind_cores:
        check_enough_cores(_local_processes(world) if started_by_torchrun else world)
    for note in notes:
        _note(note)
    if started_by_torchrun:
        rank = check_world(stages, world)
        # the run's rank 0 holds the run directory: on a file system the machines share, the
        # one every rank writes into (each rank's files have names of their own)
        with run_lock(settings.run_dir, _note) if rank == 0 else contextlib.nullcontext():
            # no launcher of ours: each process says in one line why it stopped
            failure = failures.run_logged(
                lambda: run_stage(settings), settings.run_dir, rank, capture_stderr=False
            )
        if failure:
            raise failure.error(placement(pipeline, failure.rank).name)
        return
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    # the stages' failures are in their logs; the launcher's tracebacks would bury the one line
    for name in ("torch.distributed.elastic", "torch.multiprocessing"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        with run_lock(settings.run_dir, _note):
            failures.clear(settings.run_dir)
            on_this_machine(world, stage_main, settings)
    except ChildFailedError as err:
        failure = failures.cause(settings.run_dir, err.failures)
        raise failure.error(placement(pipeline, failure.rank).name) from None


def _note(message: str) -> None:
    print(f"vpipe-train: note: {message}", file=sys.stderr, flush=True)


def on_this_machine(processes: int, entrypoint, *args) -> None:
    """Run `entrypoint(*args)` in `processes` new processes joined by a c10d rendezvous on
    loopback: what torchrun --standalone does, from Python; forked from a server that has
    imported torch once (`runtime.forkstart`)."""
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    forkstart.preload()
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=f"vpipe-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{_free_port()}",
        max_restarts=0,
        monitor_interval=0.1,
        start_method=forkstart.START_METHOD,
    )
    elastic_launch(config, forkstart.launched)(forkstart.Launcher.now(), entrypoint, *args)


def _memory_meter(
    settings: RunSettings, executor: StageExecutor, device: torch.device
) -> LiveBytes | None:
    """On CPU with --measure-memory, a counter of live tensor bytes, starting from the stage's
    weights and buffers; on CUDA, the allocator's peak is reset instead (it is always read)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return None
    if not settings.measure_memory:
        return None
    return LiveBytes([*executor.weights.values(), *executor.buffers.values()])


def stage_main(settings: RunSettings) -> None:
    """A process the launcher started: run its stage. Its stderr and its failure go to its log
    and record, never to the terminal: the launcher prints the one line that says why."""
    rank = int(os.environ["RANK"])
    failure = failures.run_logged(
        lambda: run_stage(settings), settings.run_dir, rank, capture_stderr=True
    )
    if failure:
        raise SystemExit(failure.status)


def run_stage(settings: RunSettings) -> None:
    """One process: join the group, build this stage, walk its actions segment by segment
    (one per plan in force, `runtime.switching`), write results."""
    pipeline = load_pipeline(settings.pipeline)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = _join_group(settings, pipeline.seed, rank, world)
    segments = run_segments(settings, pipeline)
    place = placement(pipeline, rank)  # every segment's: a switch keeps the processes
    print_whole(f"[Rank {rank}] Stage: {place.stage}, Rank in stage: {place.replica}")
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    per_step = microbatches_per_step(settings, pipeline.microbatches)
    stages = len(pipeline.stages)
    first_step = checkpoint.newest_complete(settings.checkpoints, stages) if settings.resume else 0
    if first_step is None:
        raise VpipeError(f"--resume: {settings.checkpoints} holds no complete checkpoint")
    segment = segment_resumed(segments, settings)
    updater = updater_for(settings, place)
    model_file = load_model_file(pipeline.model)
    timeout = timedelta(seconds=settings.timeout_s)
    replicas = ReplicaGroup(pipeline, place, device, timeout)  # the first group every rank makes
    channels = Channels.made(timeout)  # the next ones
    if not settings.bind_cores:  # bound, they could only wait for the stage's own cores
        idle_loop_threads()  # every group's is made by now (runtime/loopthreads.py)
    executor = build_executor(
        settings, segment, place, model_file, updater, replicas, channels, device, first_step
    )
    actions = first_actions(settings, segment, executor, updater, place, first_step)
    wait_for_every_stage()
    metrics = None
    if place.last and place.replica == 0:  # the stage that computes the loss reports it
        metrics = _metrics(settings, pipeline, per_step, first_step)
        executor.on_loss = metrics.add
        save_settings(settings, settings.run_dir / "settings.yaml")
    if place.rank == 0 and not settings.resume:  # a new run's switches and decisions only
        for name in (SWITCHES, DECISIONS):
            (settings.run_dir / name).unlink(missing_ok=True)
    events = EventLog(settings.run_dir / place.events_file)
    executor.on_event = events.add
    adapter = None
    if settings.adapt:
        watch = BusyWatch()

        def logged_and_watched(event: ActionEvent) -> None:
            events.add(event)
            watch.add(event)

        executor.on_event = logged_and_watched
        adapter = Adapter(settings, place, watch, pipeline.microbatches)
    meter = _memory_meter(settings, executor, device)
    start = time.perf_counter()
    retired: list[Links] = []  # the links of the plans switched from, in order
    while True:
        spec = segment.pipeline.stages[place.stage]
        stage_file = segment.path.parent / spec.module.partition(":")[0]
        if adapter:
            actions = adapter.actions(segment, iter(actions))
        with meter or contextlib.nullcontext(), edits_blamed(stage_file, spec.module_sha256):
            executor.run(actions)
        following = following_segment(segments, segment, adapter)
        if following is None:
            break
        retired.append(executor.links)  # receives it posted ahead stay pending, unused
        executor = switched_executor(
            settings, segment, following, executor, place, model_file, device, len(retired)
        )
        segment = following
        actions = segment_actions(settings, segment, place)
    seconds = time.perf_counter() - start
    events.close()
    if metrics:
        metrics.close()
        if settings.skip_nonfinite:  # every stage skipped the same steps
            skipped = executor.guard.skipped
            print(
                f"skipped {skipped} step{'s' * (skipped != 1)} with a non-finite loss or "
                "gradient (--skip-nonfinite)",
                flush=True,
            )
    _write_results(settings, executor, place, world, device, meter, seconds)
    dist.barrier()
    dist.destroy_process_group()


def _join_group(settings: RunSettings, seed: int, rank: int, world: int) -> torch.device:
    """This process's device, threads and seed, then the process group: gloo on CPU; on GPUs,
    NCCL when this machine has one GPU per process (process i on GPU i), else gloo with the
    processes sharing its GPUs in turn (i on GPU i mod count): NCCL refuses two ranks on one
    GPU ("Duplicate GPU detected"), and gloo's send and receive take CPU tensors only, so
    `runtime.links` moves the stages' messages through host memory then. Every machine must
    make the same choice: give each one as many GPUs as processes, or fewer on all of them.
    With --bind-cores, first its own cores (`runtime.cores`), and as many threads by default."""
    local_rank, local_processes = int(os.environ.get("LOCAL_RANK", 0)), _local_processes(world)
    cores = bind_own_cores(local_rank, local_processes) if settings.bind_cores else ()
    device = torch.device("cpu")
    backend = "gloo"
    if torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        device = torch.device("cuda", local_rank % gpus)
        torch.cuda.set_device(device)
        backend = "nccl" if local_processes <= gpus else "gloo"
    shared = max(1, (os.cpu_count() or 1) // world)
    torch.set_num_threads(settings.threads or len(cores) or shared)
    keep_freed_memory()  # the profile's times were taken so too
    torch.manual_seed(seed + rank)  # dropout masks: the same in every run of this plan
    dist.init_process_group(backend, timeout=timedelta(seconds=settings.timeout_s))
    print_whole(
        f"Finished initializing process group; backend: {backend}, rank: {rank}, "
        f"world_size: {world}" + (f", cores: {shown(cores)}" if cores else "")
    )
    return device


def _local_processes(world: int) -> int:
    """The processes of this machine (torchrun's LOCAL_WORLD_SIZE; all of them without it)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", world))


def _metrics(settings: RunSettings, pipeline: Pipeline, per_step: int, first_step: int) -> Metrics:
    return Metrics(
        settings.run_dir / "metrics.csv",
        per_step,
        pipeline.batch_size,
        settings.print_every,
        settings.steps,
        settings.steps_per_epoch,
        first_step,
        # throughput leaves out the fill: under asp the micro-batches the pipeline holds when
        # full, one per process (S - 1 before stage 0's first backward, and the step in which it
        # completes, in a straight pipeline); else the first step's first calls
        uncounted=world_size(pipeline) if settings.schedule == "asp" else 1,
    )


def _write_results(
    settings: RunSettings,
    executor: StageExecutor,
    place: Placement,
    world: int,
    device: torch.device,
    meter: LiveBytes | None,
    seconds: float,
) -> None:
    """The stage's final weights (its replica 0 writes them) and this process's log: what it
    held at most, how long it took, and, replicated, a digest of its final weights (the
    replicas' agree)."""
    final = executor.final_state()
    if place.replica == 0:
        torch.save(final, settings.run_dir / f"final_stage_{place.stage}.pt")
    peak = meter.peak if meter else None
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    save_stage_log(
        StageLog(
            peak_weight_versions=executor.peak_versions,
            skipped_steps=executor.guard.skipped,
            seconds=seconds,
            peak_memory_bytes=peak,
            local_processes=_local_processes(world),
            cpu_count=os.cpu_count(),
            threads=torch.get_num_threads(),
            cores=threads_cores(),
            device=device.type,
            weights_sha256=weights_digest(final) if place.replicas > 1 else None,
        ),
        settings.run_dir / place.log_file,
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
