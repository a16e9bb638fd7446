"""Moving a running pipeline to another plan of the same profile and processes (`--switch-plan
STEP:PLAN`): VPipe's virtual stage layout.

A run is cut into segments, one per plan in force. At a switch every stage drains: under 1f1b
and gpipe a step ends with nothing in flight; under asp the segment ends as a run of that many
steps would (its last micro-batches straight), and the next one fills the pipeline again, as a
resume from a drained checkpoint does. Then each rank hands the weights, buffers and optimizer
state of the nodes that leave its stage to the rank that runs them in the new plan, point to
point (replica i of a stage to replica i of the other), builds its stage from the new plan's
generated module, and goes on. Every rank walks the same list of transfers in one order, each
transfer a blocking send matched by one receive, so no two ranks ever wait on each other.

The new plan's stages are generated into `run/plans/step_<k>/` (vpipe-gen's files, for people
to read and for the run's processes to load); a checkpoint records the plan in force by its
sha256, and a resume picks the segment it belongs to.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from vpipe.codegen.schema import Pipeline, load_pipeline
from vpipe.common.errors import VpipeError
from vpipe.common.optim import Updater
from vpipe.common.replicas import run_lengths
from vpipe.runtime import checkpoint
from vpipe.runtime.links import losing, wire_device
from vpipe.runtime.placement import placements, world_size
from vpipe.runtime.settings import RunSettings

SWITCH_TAG = 2  # never a link's: plan g's links use 3g and 3g + 1 (links.TAGS_PER_PLAN)
Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PlanSwitch:
    """`--switch-plan STEP:PLAN`: after step STEP, run plan file PLAN."""

    step: int
    plan: Path

    @classmethod
    def parse(cls, text: str) -> PlanSwitch:
        step, sep, plan = text.partition(":")
        if not sep or not step.strip().isdigit() or not plan:
            raise VpipeError(
                f"--switch-plan {text!r}: give STEP:PLAN, a step number and a plan file "
                "written by vpipe-plan (e.g. 15:plan_b.yaml)"
            )
        if not Path(plan).is_file():
            raise VpipeError(
                f"--switch-plan {text!r}: {plan} is not there; plan it with vpipe-plan"
            )
        return cls(int(step), Path(plan))


@dataclass(frozen=True)
class Segment:
    """Steps `start` .. `end` - 1 of a run, on one pipeline."""

    start: int
    end: int
    path: Path  # its pipeline.yaml
    pipeline: Pipeline


@dataclass(frozen=True)
class Move:
    """What passes from stage `source` to stage `target` at a switch: the nodes, and the
    parameters and buffers they hold (by their names in the original model)."""

    source: int
    target: int
    nodes: tuple[str, ...]
    tensors: tuple[str, ...]


@dataclass
class MovedState:
    """One transfer's payload: what the receiving rank takes over for the names it gains."""

    weights: Tensors
    buffers: Tensors
    optimizer: dict[str, Tensors]  # Updater.state, by weight name

    @property
    def bytes(self) -> int:
        tensors = [*self.weights.values(), *self.buffers.values()]
        tensors += [t for state in self.optimizer.values() for t in state.values()]
        return sum(t.numel() * t.element_size() for t in tensors)


def plan_segments(
    switches: Sequence[PlanSwitch],
    path: Path,
    pipeline: Pipeline,
    steps: int,
    schedule: str,
    run_dir: Path,
) -> tuple[Segment, ...]:
    """The run's segments: `pipeline` first, then each switch's plan, generated into
    run_dir/plans/step_<k> and checked against the running pipeline before any process starts."""
    segments = [Segment(0, steps, path, pipeline)]
    for switch in sorted(switches, key=lambda s: s.step):
        where = f"--switch-plan {switch.step}:{switch.plan}"
        previous = segments[-1]
        if not previous.start < switch.step < steps:
            raise VpipeError(
                f"{where}: the step must fall inside the run, after step {previous.start} and "
                f"before its last ({steps})"
            )
        new_path = generated(switch.plan, run_dir / "plans" / f"step_{switch.step}")
        new = load_pipeline(new_path)
        check_switchable(pipeline, new, where)
        every = run_lengths(schedule, [len(s.ranks) for s in new.stages])
        if switch.step % every:
            raise VpipeError(
                f"{where}: under asp a stage's replicas update alike only every {every} steps; "
                f"switch at a multiple of {every}"
            )
        segments[-1] = Segment(previous.start, switch.step, previous.path, previous.pipeline)
        segments.append(Segment(switch.step, steps, new_path, new))
    return tuple(segments)


def generated(plan: Path, out: Path) -> Path:
    """vpipe-gen's files for `plan` in `out`, made by the first process that gets there (the
    others, on this machine, wait on a lock and find them made)."""
    from vpipe.codegen.generate import generate

    out.parent.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(plan.read_bytes()).hexdigest()
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        made = out / "pipeline.yaml"
        if not (made.is_file() and load_pipeline(made).plan_sha256 == sha):
            generate(plan, out)
    return made


def check_switchable(old: Pipeline, new: Pipeline, where: str) -> None:
    """Refuse a plan the running processes cannot switch to, saying why, before anything
    moves: another model or graph, another micro-batch, other processes, tied parameters."""
    if (old.model, old.model_sha256) != (new.model, new.model_sha256):
        raise VpipeError(f"{where}: the plan is for another model ({new.model}, not {old.model})")
    old_nodes = [n for s in old.stages for n in s.nodes]
    new_nodes = [n for s in new.stages for n in s.nodes]
    if sorted(old_nodes) != sorted(new_nodes) or old.batch_size != new.batch_size:
        raise VpipeError(
            f"{where}: the plan is for another profile (other nodes or micro-batch size than "
            "the running pipeline's); plan from the profile the running pipeline was planned "
            "from"
        )
    if world_size(new) != world_size(old) or [s.ranks for s in new.stages] != [
        s.ranks for s in old.stages
    ]:
        shape = ", ".join(str(len(s.ranks)) for s in new.stages)
        running = ", ".join(str(len(s.ranks)) for s in old.stages)
        raise VpipeError(
            f"{where}: the plan runs {len(new.stages)} stages on {world_size(new)} processes "
            f"(replicas {shape}), the running pipeline {len(old.stages)} on {world_size(old)} "
            f"(replicas {running}); a switch keeps the stages and their processes: plan with "
            f"--gpus {world_size(old)} --stages {len(old.stages)}"
        )
    if old.microbatches != new.microbatches:
        raise VpipeError(
            f"{where}: the plan takes {new.microbatches} micro-batches per step, the running "
            f"pipeline {old.microbatches}; plan with --microbatches {old.microbatches}"
        )
    if old.tied or new.tied:
        raise VpipeError(
            f"{where}: parameters tied across stages cannot move between stages yet; train "
            "without --switch-plan"
        )


def segment_resumed(segments: Sequence[Segment], settings: RunSettings) -> Segment:
    """The segment a run starts in: the first, or, resuming, the one whose plan wrote the
    newest checkpoint (a checkpoint at a switch's step is the old plan's, taken before it)."""
    if not settings.resume:
        return segments[0]
    step = checkpoint.newest_complete(settings.checkpoints, len(segments[0].pipeline.stages))
    return next(s for s in segments if s.start < (step or 0) <= s.end or s.start == (step or 0))


def held_tensors(directory: Path, pipeline: Pipeline) -> list[set[str]]:
    """Per stage, the names of the parameters and buffers it holds: its weights file's keys."""
    return [
        set(torch.load(directory / s.weights, weights_only=True, mmap=True))
        for s in pipeline.stages
    ]


def moves(old: Segment, new: Segment) -> list[Move]:
    """What passes between which stages at the switch from `old` to `new`, in the one order
    every rank walks."""
    held_old = held_tensors(old.path.parent, old.pipeline)
    held_new = held_tensors(new.path.parent, new.pipeline)
    found = []
    for source, before in enumerate(old.pipeline.stages):
        for target, after in enumerate(new.pipeline.stages):
            if source == target:
                continue
            nodes = tuple(n for n in before.nodes if n in set(after.nodes))
            tensors = tuple(sorted(held_old[source] & held_new[target]))
            if nodes or tensors:
                found.append(Move(source, target, nodes, tensors))
    return found


def transfer(
    all_moves: Sequence[Move],
    old: Pipeline,
    new: Pipeline,
    rank: int,
    weights: Tensors,
    buffers: Tensors,
    updater: Updater,
    device: torch.device,
) -> tuple[Tensors, Tensors, int]:
    """Send what leaves this rank's stage, receive what joins it; the weights and buffers this
    rank holds afterwards (the ones kept are the same tensors), with `updater.state` re-keyed to
    them, and the bytes this rank sent."""
    sent = 0
    names = {p.rank: p.name for p in placements(old)}  # for a lost peer's error
    for move in all_moves:
        sources, targets = old.stages[move.source].ranks, new.stages[move.target].ranks
        for src, dst in zip(sources, targets, strict=True):
            if rank == src:
                state = MovedState(
                    {n: weights[n].detach() for n in move.tensors if n in weights},
                    {n: buffers[n] for n in move.tensors if n in buffers},
                    {n: updater.state[n] for n in move.tensors if n in updater.state},
                )
                sent += state.bytes
                with losing(dst, f"{names[dst]} during the switch"):
                    _send(state, dst, device)
                weights = {n: t for n, t in weights.items() if n not in move.tensors}
                buffers = {n: t for n, t in buffers.items() if n not in move.tensors}
                for name in move.tensors:
                    updater.state.pop(name, None)
            elif rank == dst:
                with losing(src, f"{names[src]} during the switch"):
                    state = _recv(src, device)
                weights = {**weights, **state.weights}
                buffers = {**buffers, **state.buffers}
                updater.state.update(state.optimizer)
    return weights, buffers, sent


def _send(state: MovedState, dst: int, device: torch.device) -> None:
    """One payload as its size, then its bytes (`torch.save`'s), on the wire `device` has."""
    buffer = io.BytesIO()
    torch.save(
        {"weights": state.weights, "buffers": state.buffers, "optimizer": state.optimizer}, buffer
    )
    wire = wire_device(device)
    data = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8).to(wire)
    dist.send(torch.tensor([data.numel()], dtype=torch.int64, device=wire), dst, tag=SWITCH_TAG)
    dist.send(data, dst, tag=SWITCH_TAG)


def _recv(src: int, device: torch.device) -> MovedState:
    wire = wire_device(device)
    size = torch.zeros(1, dtype=torch.int64, device=wire)
    dist.recv(size, src, tag=SWITCH_TAG)
    data = torch.empty(int(size.item()), dtype=torch.uint8, device=wire)
    dist.recv(data, src, tag=SWITCH_TAG)
    raw = io.BytesIO(data.cpu().numpy().tobytes())
    loaded = torch.load(raw, weights_only=True, map_location=device)
    return MovedState(loaded["weights"], loaded["buffers"], loaded["optimizer"])
