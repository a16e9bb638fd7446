"""The stage a process runs in each segment of a run (one per plan in force: `runtime.switching`,
`runtime.adapt`): built from the segment's pipeline with the options asked for, the actions it
walks (all of them, resumed from a checkpoint, or refilled after a switch), and rebuilt from
the next plan at a switch."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from vpipe.codegen.schema import Pipeline
from vpipe.common.cli import print_whole
from vpipe.common.modelfile import ModelFile
from vpipe.common.optim import Updater
from vpipe.common.replicas import asp_reach, refilled, replica_actions, replica_resumed
from vpipe.common.schedules import Action
from vpipe.runtime import checkpoint, failures
from vpipe.runtime.adapt import Adapter
from vpipe.runtime.clipping import GlobalNormClipper
from vpipe.runtime.executor import StageExecutor
from vpipe.runtime.layoutlog import SWITCHES, Moved, SwitchRecord
from vpipe.runtime.links import Channels, Links
from vpipe.runtime.lr_schedule import LrSchedule
from vpipe.runtime.nonfinite import NonFiniteGuard
from vpipe.runtime.placement import Placement, world_size
from vpipe.runtime.replicas import ReplicaGroup
from vpipe.runtime.rowlog import append_row
from vpipe.runtime.settings import RunSettings, microbatches_per_step
from vpipe.runtime.switching import PlanSwitch, Segment, moves, plan_segments, transfer


def run_segments(settings: RunSettings, pipeline: Pipeline) -> tuple[Segment, ...]:
    """The run's plans in force and their steps (one segment without --switch-plan)."""
    switches = [PlanSwitch.parse(text) for text in settings.switch_plan]
    return plan_segments(
        switches,
        Path(settings.pipeline),
        pipeline,
        settings.steps,
        settings.schedule,
        settings.run_dir,
    )


def following_segment(
    segments: tuple[Segment, ...], segment: Segment, adapter: Adapter | None
) -> Segment | None:
    """The segment after `segment`: the one --adapt switched to, else the next
    --switch-plan's, else none (the run is done)."""
    if adapter and adapter.following:
        following, adapter.following = adapter.following, None
        return following
    if segment in segments and segment is not segments[-1]:
        return segments[segments.index(segment) + 1]
    return None


def build_executor(
    settings: RunSettings,
    segment: Segment,
    place: Placement,
    model_file: ModelFile,
    updater: Updater,
    replicas: ReplicaGroup,
    channels: Channels,
    device: torch.device,
    first_step: int,
    generation: int = 0,
) -> StageExecutor:
    """This process's stage in `segment`'s pipeline, with the options asked for. Its links
    expect the micro-batches it runs from `first_step` (or the segment's start) to the
    segment's end, on the tags of the run's `generation`-th switched-to plan, in `channels`."""
    per_step = microbatches_per_step(settings, segment.pipeline.microbatches)
    first = max(segment.start, first_step) * per_step
    executor = StageExecutor(
        segment.pipeline,
        segment.path.parent,
        place.stage,
        model_file,
        updater,
        Links(
            segment.pipeline,
            place,
            device,
            place.own(first, segment.end * per_step),
            generation,
            channels,
        ),
        replicas,
        settings.schedule,
        device,
    )
    _add_options(settings, segment, executor, updater, place.stage, device)
    return executor


def _add_options(
    settings: RunSettings,
    segment: Segment,
    executor: StageExecutor,
    updater: Updater,
    stage: int,
    device: torch.device,
) -> None:
    """Gradient clipping, skipping non-finite steps and periodic checkpoints, as asked. A
    checkpoint records the plan in force and the end of its segment (under asp, whether the
    pipeline was draining)."""
    pipeline = segment.pipeline
    stages = len(pipeline.stages)
    if settings.clip_grad_norm is not None:
        clipper = GlobalNormClipper(
            pipeline,
            stage,
            settings.schedule,
            settings.clip_grad_norm,
            device,
            executor.replicas.group,
        )
        executor.clip = clipper.clip
    if settings.skip_nonfinite:
        per_step = microbatches_per_step(settings, pipeline.microbatches)
        executor.guard = NonFiniteGuard(world_size(pipeline), per_step, device, skip=True)
    if settings.checkpoint_every:
        every = settings.checkpoint_every
        identity = checkpoint.identity(pipeline.plan_sha256, settings.schedule, settings.optimizer)

        def checkpoint_after(steps: int) -> None:
            if steps % every:
                return
            snapshot = executor.snapshot()  # every replica takes part; its first writes
            if snapshot is not None:
                checkpoint.save(
                    settings.checkpoints,
                    steps,
                    stage,
                    stages,
                    snapshot,
                    updater,
                    identity,
                    segment.end,
                )

        executor.on_update = checkpoint_after


def switched_executor(
    settings: RunSettings,
    old: Segment,
    new: Segment,
    executor: StageExecutor,
    place: Placement,
    model_file: ModelFile,
    device: torch.device,
    generation: int,
) -> StageExecutor:
    """The drained `executor` handed over to `new`'s plan (the run's `generation`-th switch):
    what leaves this stage goes to its new holder, what joins it arrives, and the stage is
    built from the new plan's module."""
    wait_for_every_stage(f"during the switch at step {new.start}")  # every stage drained
    start = time.perf_counter()
    all_moves = moves(old, new)
    weights, buffers, sent = transfer(
        all_moves,
        old.pipeline,
        new.pipeline,
        place.rank,
        executor.weights,
        executor.buffers,
        executor.updater,
        device,
    )
    built = build_executor(
        settings,
        new,
        place,
        model_file,
        executor.updater,
        executor.replicas,
        executor.links.channels,
        device,
        new.start,
        generation,
    )
    built.adopt(weights, buffers, executor)
    totals = [0] * dist.get_world_size()
    try:
        dist.all_gather_object(totals, sent)
    except RuntimeError as err:
        raise failures.LostPeer(
            f"lost a stage during the switch at step {new.start}: {failures.first_line(err)}"
        ) from None
    if place.rank == 0:
        seconds = time.perf_counter() - start
        moved = [Moved(m.source, m.target, len(m.nodes)) for m in all_moves]
        record = SwitchRecord.of(new.start, start, seconds, moved, sum(totals), new.path)
        print_whole(record.line())
        append_row(settings.run_dir / SWITCHES, record)
    return built


def updater_for(settings: RunSettings, place: Placement) -> Updater:
    """The stage's optimizer. Its update n takes the rate of step n; under asp a stage with r
    replicas makes one update per r micro-batches, and its update n takes the rate of the first
    of them (micro-batch n r), so every stage's part of a micro-batch sees about one rate."""
    lr_schedule = LrSchedule(
        settings.lr_schedule, settings.warmup_steps, settings.steps, settings.min_lr / settings.lr
    )
    per_update = place.replicas if settings.schedule == "asp" else 1
    return Updater(
        settings.optimizer,
        settings.lr,
        settings.momentum,
        settings.weight_decay,
        lr_factor=lambda n: lr_schedule.factor(n * per_update),
    )


def segment_actions(settings: RunSettings, segment: Segment, place: Placement) -> Iterator[Action]:
    """This process's actions over `segment`'s steps, from an empty pipeline: under asp it
    fills again at the segment's start and drains at its end, as separate runs would."""
    per_step = microbatches_per_step(settings, segment.pipeline.microbatches)
    if settings.schedule == "asp":
        first, end = segment.start * per_step, segment.end * per_step
        return refilled(end, place.replicas, place.workers_from_here, place.replica, first)
    planned = replica_actions(
        settings.schedule,
        segment.pipeline.microbatches,
        segment.end,
        place.replicas,
        place.workers_from_here,
        place.replica,
    )
    if not segment.start:
        return planned
    return replica_resumed(planned, segment.start * per_step, place.replicas, place.replica)


def first_actions(
    settings: RunSettings,
    segment: Segment,
    executor: StageExecutor,
    updater: Updater,
    place: Placement,
    first_step: int,
) -> Iterator[Action]:
    """The actions this process still has to run in `segment`: all of them, or, resuming, what
    follows the checkpoint after `first_step`, whose state the executor is restored to (each
    replica of a stage its own part of the stage's file)."""
    pipeline = segment.pipeline
    per_step = microbatches_per_step(settings, pipeline.microbatches)
    total, done = segment.end * per_step, first_step * per_step
    planned = segment_actions(settings, segment, place)
    if not settings.resume:
        return planned
    identity = checkpoint.identity(pipeline.plan_sha256, settings.schedule, settings.optimizer)
    tensors = checkpoint.StageTensors(executor.weights, executor.buffers)
    saved, written_by = checkpoint.load(
        settings.checkpoints, first_step, place.stage, updater, identity, tensors, executor.device
    )
    # an asp checkpoint from a run that was draining (its last S - 1 steps, straight) holds
    # none of what a longer run would have in flight: the pipeline fills again from there, as
    # a new run
    reach = asp_reach([len(s.ranks) for s in pipeline.stages])
    refill = settings.schedule == "asp" and done + reach > written_by
    executor.restore(saved, place.replica, done if refill else total)  # a refill replays nothing
    if place.rank == 0:
        how = ", the pipeline filling again (the run that wrote it had drained)" if refill else ""
        print(f"resuming after step {first_step} from {settings.checkpoints}{how}", flush=True)
    if refill:
        return refilled(total, place.replicas, place.workers_from_here, place.replica, done)
    return replica_resumed(planned, done, place.replicas, place.replica)


def wait_for_every_stage(when: str = "before training began") -> None:
    """Every stage built (or drained, at a switch): the clock starts now. A stage that failed
    meanwhile has a record saying why; this one only lost it."""
    try:
        dist.barrier()
    except RuntimeError as err:
        raise failures.LostPeer(f"lost a stage {when}: {failures.first_line(err)}") from None
