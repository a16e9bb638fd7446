"""`vpipe-train --adapt`: re-plan from what the stages measure, and switch while training.

Every `--adapt-every` steps each stage reports its busy milliseconds per micro-batch over the
last window (the median micro-batch's wall time less what it waited on its neighbours: a core
another job shares makes it longer, which CPU time would not show). Rank 0 divides each by
the plan's predicted compute for that stage; when the stages' ratios differ by more than
THRESHOLD, their devices no longer run as the plan assumed, so it re-plans in-process
(`planner.planning.replan_for_speeds`) with each stage index's device as slow, relative to
the fastest, as measured (a speed belongs to the device, not to its nodes). It switches
(`runtime.switching`) when the new plan's predicted bottleneck is MIN_GAIN faster than the
running plan's at the same speeds and the time saved over the rest of the run beats what a
switch costs. The speeds a plan was made for are in it, so after a switch the stages measure
against the new plan's predictions: the ratios even out and no switch follows unless the
machine changes again (no flapping).

A switch is a trial: its plan rests on speeds measured on the old split, and a device whose
speed depends on its load (a core shared with another job) can make it wrong. The first check
after a switch compares the pipeline's pace (wall milliseconds per micro-batch) with the pace
before it, and goes back to the plan before, for the rest of the run, if the new one is slower.

Every check is a row of run/adapt.csv (`AdaptDecision`); a switch is also one line, and a row
of run/switches.csv.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch.distributed as dist

from vpipe.codegen.schema import load_pipeline
from vpipe.common.errors import VpipeError
from vpipe.common.replicas import asp_reach, refilled, replica_resumed
from vpipe.common.schedules import FORWARD, Action
from vpipe.planner.schema import Plan, load_plan, save_plan
from vpipe.profiler.schema import load_profile
from vpipe.runtime import failures
from vpipe.runtime.events import ActionEvent
from vpipe.runtime.layoutlog import DECISIONS, AdaptDecision
from vpipe.runtime.placement import Placement
from vpipe.runtime.rowlog import append_row
from vpipe.runtime.settings import RunSettings, microbatches_per_step
from vpipe.runtime.switching import Segment, generated

THRESHOLD = 0.2  # stages' measured/predicted ratios this far apart: re-plan
MIN_GAIN = 0.1  # a new plan must be predicted this much faster (hysteresis)
SWITCH_MS = 100.0  # a switch's transfer and rebuild: the tests' took 30-90 ms on 2 cores


@dataclass(frozen=True)
class Window:
    """What one stage measured over a check's window, per micro-batch: its busy wall time (its
    device's speed, what a re-plan weighs) and the wall time from one micro-batch to the next
    (the pipeline's pace, which in steady state every stage shares: what a switch must better)."""

    busy_ms: float
    period_ms: float


class BusyWatch:
    """A stage's busy time per micro-batch, and elapsed wall time per micro-batch, since it
    was last read, from micro-batch `first` on (a segment's first ones fill the pipeline and
    pay first calls' costs).

    The busy figure is the median over the window's micro-batches of each one's forward and
    backward: a one-off stall (a page fault, another process's burst) in one micro-batch must
    neither start a re-plan nor hide a device that stays slow, and a mean lets it do both
    (docs/runtime.md, re-planning: 135 ms of stalls can hide a stage 3 times slower)."""

    def __init__(self) -> None:
        self.forward_s: dict[int, float] = {}  # forwards whose backward has not run yet
        self.busy_s: list[float] = []  # per micro-batch whose backward ran in the window
        self.first = 0
        self.since_s: float | None = None  # the window's first counted action's start
        self.until_s = 0.0  # its last one's end

    def add(self, event: ActionEvent) -> None:
        if event.microbatch < self.first:
            return
        busy_s = event.end_s - event.start_s - event.wait_s
        if event.action == FORWARD:
            self.forward_s[event.microbatch] = busy_s
        else:
            self.busy_s.append(self.forward_s.pop(event.microbatch, 0.0) + busy_s)
        if self.since_s is None:
            self.since_s = event.start_s
        self.until_s = event.end_s

    def take(self) -> Window:
        count = max(1, len(self.busy_s))
        elapsed = self.until_s - self.since_s if self.since_s is not None else 0.0
        busy_ms = statistics.median(self.busy_s) * 1e3 if self.busy_s else 0.0
        window = Window(busy_ms, elapsed * 1e3 / count)
        self.busy_s, self.since_s = [], None
        return window


def check_adaptable(settings: RunSettings, segments: Sequence[Segment]) -> None:
    """Before any process starts: what --adapt does not support yet is refused."""
    if not settings.adapt:
        return
    pipeline = segments[0].pipeline
    unsupported = [
        option
        for option, used in (
            ("--switch-plan", len(segments) > 1),
            ("--resume", settings.resume),
            ("replicated stages", any(len(s.ranks) > 1 for s in pipeline.stages)),
            ("parameters tied across stages", bool(pipeline.tied)),
            ("--checkpoint-every under asp", bool(settings.checkpoint_every) and _asp(settings)),
        )
        if used
    ]
    if unsupported:
        raise VpipeError(
            f"--adapt: not supported with {', '.join(unsupported)} yet; train without "
            f"{'them' if len(unsupported) > 1 else 'it'}, or without --adapt"
        )
    if len(pipeline.stages) < 2:
        raise VpipeError("--adapt: a pipeline of one stage has no split to change")


def _asp(settings: RunSettings) -> bool:
    return settings.schedule == "asp"


class Adapter:
    """Walks a segment's actions and, at each check, decides with the other ranks whether to
    switch; after a switch the segment's actions end with a drain and `following` holds the
    segment to go on with."""

    def __init__(
        self, settings: RunSettings, place: Placement, watch: BusyWatch, microbatches: int
    ) -> None:
        self.settings, self.place, self.watch = settings, place, watch
        self.per_step = microbatches_per_step(settings, microbatches)
        self.following: Segment | None = None
        self.last: LastSwitch | None = None  # rank 0's memory of the last switch
        self.settled = False

    def actions(self, segment: Segment, planned: Iterator[Action]) -> Iterator[Action]:
        self.watch.first = (segment.start + self._warm_up(segment)) * self.per_step
        self.watch.take()
        for action in planned:
            yield action  # resumed once the executor has run it
            step = self._check_after(action, segment)
            if step is None:
                continue
            following = self._check(segment, step)
            if following is not None:
                self.following = following
                yield from self._drain(segment, action, following.start)
                return

    def _check_after(self, action: Action, segment: Segment) -> int | None:
        """The steps done, if a check follows this action: the backward that completes a step
        that ends a window, with room left in the run for the next window and a switch's
        drain (every stage reaches it: under asp after the same backward, each stage's
        dependencies on its neighbours all point to earlier actions)."""
        if self.settled or action.kind == FORWARD or (action.microbatch + 1) % self.per_step:
            return None
        step = (action.microbatch + 1) // self.per_step
        every = self.settings.adapt_every
        room = max(every, len(segment.pipeline.stages))
        watched = step - segment.start - self._warm_up(segment)  # steps measured so far
        if watched < every or watched % every:
            return None
        return step if step + room <= segment.end else None

    @staticmethod
    def _warm_up(segment: Segment) -> int:
        """Steps of a segment not measured: the pipeline filling and first calls' costs."""
        return 2 * len(segment.pipeline.stages)

    def _drain(self, segment: Segment, last: Action, end: int) -> Iterator[Action]:
        """The actions that finish what is in flight and start nothing new: none at a step's
        end under 1f1b and gpipe; under asp the rest of a run that ends at `end`."""
        if not _asp(self.settings):
            return
        place = self.place
        stream = refilled(end, 1, place.workers_from_here, 0, segment.start)
        yield from replica_resumed(stream, last.microbatch + 1, 1, 0)

    def _check(self, segment: Segment, step: int) -> Segment | None:
        """One check, on every rank at once: the segment to switch to, or None."""
        began = time.perf_counter()
        window = self.watch.take()
        stages = len(segment.pipeline.stages)
        start = step + asp_reach([1] * stages) if _asp(self.settings) else step  # after a drain
        plan_path = self.settings.run_dir / "plans" / f"adapt_step_{start}.yaml"
        everyone: list[Window | None] = [None] * dist.get_world_size()
        shared: list[tuple[AdaptDecision, str] | None] = [None]
        try:
            dist.all_gather_object(everyone, window)
            if self.place.rank == 0:
                windows = [w for w in everyone if w is not None]
                left = (self.settings.steps - step) * self.per_step
                chosen = decide(segment, step, windows, left, plan_path, self.last)
                self.last = _remembered(self.last, chosen[0], segment)
                shared[0] = chosen
            dist.broadcast_object_list(shared, src=0)
        except RuntimeError as err:
            raise failures.LostPeer(
                f"lost a stage at --adapt's check after step {step}: {failures.first_line(err)}"
            ) from None
        assert shared[0] is not None
        decision, plan_text = shared[0]
        self.settled = decision.settled
        following = None
        if decision.switched:
            if not plan_path.is_file() or plan_path.read_text() != plan_text:  # another machine
                plan_path.parent.mkdir(parents=True, exist_ok=True)
                plan_path.write_text(plan_text)
            pipeline_path = generated(plan_path, plan_path.with_suffix(""))
            following = Segment(start, segment.end, pipeline_path, load_pipeline(pipeline_path))
        if self.place.rank == 0:
            seconds = time.perf_counter() - began
            append_row(self.settings.run_dir / DECISIONS, replace(decision, seconds=seconds))
        return following


@dataclass(frozen=True)
class LastSwitch:
    """What rank 0 remembers of --adapt's last switch: the plan to go back to, and the pace to
    beat (so as not to keep a switch that did not pay, nor undo one blindly)."""

    before: Path  # the plan file run before it
    period_ms: float  # the pipeline's pace on that plan, at the check that switched
    judged: bool = False  # a check on the new plan has compared its pace with `period_ms`


def _remembered(
    last: LastSwitch | None, decision: AdaptDecision, segment: Segment
) -> LastSwitch | None:
    """Rank 0's memory after a check: a new switch, or the last one, judged once checked."""
    if decision.switched:
        return LastSwitch(segment.path.parent / segment.pipeline.plan, decision.period_ms)
    return replace(last, judged=True) if last is not None else None


def shifts(old: Plan, new: Plan) -> tuple[int, ...]:
    """Per cut, which way `new` moves it from `old`: +1 later (stages before it gain nodes),
    -1 earlier, 0 not at all."""
    found, before, after = [], 0, 0
    for a, b in zip(old.stages[:-1], new.stages[:-1], strict=True):
        before, after = before + len(a.nodes), after + len(b.nodes)
        found.append((after > before) - (after < before))
    return tuple(found)


def decide(
    segment: Segment,
    step: int,
    windows: Sequence[Window],
    microbatches_left: int,
    plan_path: Path,
    last: LastSwitch | None = None,
) -> tuple[AdaptDecision, str]:
    """Rank 0's choice after `step`, from every stage's window: keep the running plan, or
    switch to the plan for the measured speeds, written to `plan_path` (its YAML text; "" when
    kept).

    A device's speed need not be a constant factor: a stage that shares its core with another
    job gets the core back at once after waiting, so with less work it runs faster than the
    same core measured when busy. So the first check after a switch goes back to the plan
    before it if the pipeline now runs slower; and a re-plan that would move a cut back the
    way the last switch moved it from is that model failing, not the machine changing. Either
    way the run settles, on whichever of the two splits ran faster, and makes no more checks."""
    from vpipe.planner.planning import replan_for_speeds

    plan = running_plan(segment)
    measured = [w.busy_ms for w in windows]
    period_ms = max(w.period_ms for w in windows)  # the stages' views of one pace
    predicted = [s.predicted.compute_ms for s in plan.stages]
    ratios = [m / p if p > 0 else 1.0 for m, p in zip(measured, predicted, strict=True)]
    slowest = max(s.predicted.time_ms for s in plan.stages)
    kept = AdaptDecision(
        step=step,
        measured_ms=" ".join(f"{m:.3f}" for m in measured),
        period_ms=period_ms,
        ratios=" ".join(f"{r:.3f}" for r in ratios),
        speeds="",
        current_ms=slowest,
        planned_ms=slowest,
        switched=False,
        reason="",
    )
    if last is not None and not last.judged and period_ms > last.period_ms:
        return _settle(kept, last, plan_path, "the switch did not pay")
    fastest = min(ratios)
    if max(ratios) <= fastest * (1 + THRESHOLD):
        reason = f"stages within {THRESHOLD:.0%} of their predictions' proportions"
        return replace(kept, reason=reason), ""
    before = plan.settings.stage_speeds or (1.0,) * len(plan.stages)
    speeds = [b * r / fastest for b, r in zip(before, ratios, strict=True)]
    profile = load_profile(plan.profile)
    replanned = replan_for_speeds(plan, profile, plan.profile, plan.profile_sha256, speeds)
    current, planned = replanned.current_ms, replanned.planned_ms
    # in the profile's milliseconds on the fastest device: `fastest` of them per measured one.
    # A switch costs a drain and a fill under asp (about 2 (S - 1) micro-batches at the
    # running pace) and the transfer and rebuild (SWITCH_MS)
    stages, schedule = len(plan.stages), segment.pipeline.schedule
    cost_ms = SWITCH_MS + (2 * (stages - 1) * current * fastest if schedule == "asp" else 0)
    saved_ms = (current - planned) * fastest * microbatches_left
    switched = planned * (1 + MIN_GAIN) <= current and saved_ms > cost_ms
    if switched:
        reason = f"predicted {current / planned:.2f}x faster; saves {saved_ms:.0f} ms"
    elif planned * (1 + MIN_GAIN) > current:
        reason = f"the best plan for these speeds is not {MIN_GAIN:.0%} faster"
    else:
        reason = f"saves {saved_ms:.0f} ms, less than a switch costs ({cost_ms:.0f} ms)"
    decision = replace(
        kept,
        speeds=" ".join(f"{s:.3f}" for s in speeds),
        current_ms=current,
        planned_ms=planned,
        switched=switched,
        reason=reason,
    )
    if switched and last is not None and _undoes(load_plan(last.before), plan, replanned.plan):
        return _settle(decision, last, plan_path, "the re-plan would move nodes back")
    if not switched:
        return decision, ""
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    save_plan(replanned.plan, plan_path)  # its profile recorded relative to where it lies
    return decision, plan_path.read_text()


def _settle(
    decision: AdaptDecision, last: LastSwitch, plan_path: Path, why: str
) -> tuple[AdaptDecision, str]:
    """Settle on whichever of the running split and the one before the last switch ran at
    the faster pace: keep this one, or go back (a switch to the plan before, written to
    `plan_path`)."""
    now, before = decision.period_ms, last.period_ms
    if now <= before:
        reason = (
            f"settled ({why}): this split runs {now:.2f} ms per micro-batch, the one before "
            f"the last switch ran {before:.2f}"
        )
        return replace(decision, switched=False, settled=True, reason=reason), ""
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    save_plan(load_plan(last.before), plan_path)  # its profile relative to where it lies
    reason = (
        f"settled ({why}): back to the split before the last switch, which ran {before:.2f} ms "
        f"per micro-batch against this one's {now:.2f}"
    )
    return replace(decision, switched=True, settled=True, reason=reason), plan_path.read_text()


def _undoes(before: Plan, running: Plan, proposed: Plan) -> bool:
    """Whether `proposed` moves some cut back the way the switch from `before` to `running`
    moved it."""
    done, next_ = shifts(before, running), shifts(running, proposed)
    return any(a * b < 0 for a, b in zip(done, next_, strict=True))


def running_plan(segment: Segment) -> Plan:
    """The plan file `segment`'s pipeline was generated from."""
    path = segment.path.parent / segment.pipeline.plan
    if not path.is_file():
        raise VpipeError(
            f"--adapt re-plans from {path}, the plan {segment.path} was generated from, which "
            "is not there; regenerate the pipeline with vpipe-gen from its plan"
        )
    return load_plan(path)
