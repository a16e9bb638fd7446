"""Per-stage checkpoints, and finding the newest one every stage finished.

Each stage writes `<dir>/step_<n>/stage_<k>.pt` right after its n-th optimizer step, through a
temporary file and a rename, so a kill mid-write leaves the previous checkpoint whole. A step
counts only when every stage's file for it exists; resume takes the newest such step. Under
1f1b and gpipe nothing is in flight then; under asp a stage also saves, for each micro-batch in
flight, the weight version its forward used (`StageExecutor.snapshot`), and resume rebuilds
those micro-batches from them (`StageExecutor.restore`).

A stage with data-parallel replicas still writes one file, its replica 0's: the replicas hold
the same weights, stashed versions and optimizer state (they apply the same updates), so those
are saved once; what is each replica's own (its random state, its buffers' running statistics,
its micro-batches in flight) is gathered into the file as one `ReplicaState` per replica, and
each replica restores its own.

A file is one `torch.save` of a dict (`torch.load(..., weights_only=True)` reads it anywhere):
`Checkpoint`'s fields and `schema_version`. A file of another version, or with a field missing,
unknown or of the wrong kind, is refused before any process starts.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from vpipe.common.errors import VpipeError
from vpipe.common.optim import Updater
from vpipe.common.records import Count, decode
from vpipe.common.stages import check_tensors

SCHEMA_VERSION = 2  # of step_<n>/stage_<k>.pt (2: the replicas' own parts)
KEEP = 2  # newest complete steps kept; older ones are removed


@dataclass(frozen=True)
class StageTensors:
    """What a stage holds: its trainable weights and its buffers, by name."""

    weights: Mapping[str, torch.Tensor]
    buffers: Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class ReplicaState:
    """What one process of a stage holds that its replicas do not share (one per stage on a
    straight pipeline)."""

    # running statistics: each replica's forwards see only its own micro-batches
    buffers: dict[str, torch.Tensor]
    # under asp, per micro-batch in flight on this replica: its number, its version's index in
    # the stage's `versions`, and the random state its forward started from
    in_flight: tuple[tuple[Count, Count, dict[str, torch.Tensor]], ...]
    rng: dict[str, torch.Tensor]  # this process's random state (runtime/rng.py)


@dataclass(frozen=True)
class StageState:
    """What a checkpoint holds of its stage (`StageExecutor.snapshot`). Its tensors are checked
    against the stage's own by name, shape and dtype when it is loaded."""

    weights: dict[str, torch.Tensor]  # the newest version
    # under asp, the older versions that micro-batches in flight still need, each once (the
    # replicas' k-th micro-batches in flight use the same version)
    versions: tuple[dict[str, torch.Tensor], ...]
    replicas: tuple[ReplicaState, ...]  # by replica
    skipped: Count  # steps skipped so far under --skip-nonfinite


@dataclass(frozen=True)
class Identity:
    """What a checkpoint records of the run that wrote it, and a resume must match."""

    plan_sha256: str
    schedule: str
    optimizer_kind: str


# what to say when a resume does not match
MISMATCH = {
    "plan_sha256": "belongs to another plan (its plan sha256 differs); resume with the pipeline "
    "that wrote it, or choose another --checkpoint-dir",
    "schedule": "was written under --schedule {}; resume with it",
    "optimizer_kind": "was written with --optimizer {}; resume with it",
}


@dataclass(frozen=True)
class Checkpoint(Identity):
    """One stage's file after one step."""

    step: Count  # the stage's steps so far, skipped ones included
    run_steps: Count  # the length of the run that wrote it (under asp: whether it drained)
    stage: StageState
    optimizer: dict[str, dict[str, torch.Tensor]]  # Updater.state, by weight name
    optimizer_steps: Count  # updates done: Adam's bias correction and the lr schedule need it


def save(
    directory: Path,
    step: int,
    stage: int,
    stages: int,
    snapshot: StageState,
    updater: Updater,
    identity: Identity,
    run_steps: int,
) -> None:
    """Stage `stage`'s file after `step`; `run_steps`: the length of the run that writes it."""
    folder = directory / f"step_{step}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".stage_{stage}.pt.tmp"
    record = Checkpoint(
        **_fields(identity),
        step=step,
        run_steps=run_steps,
        stage=snapshot,
        optimizer=updater.state,
        optimizer_steps=updater.steps,
    )
    stage_fields = {**_fields(snapshot), "replicas": [_fields(r) for r in snapshot.replicas]}
    state = {"schema_version": SCHEMA_VERSION, **_fields(record), "stage": stage_fields}
    torch.save(state, tmp)
    os.replace(tmp, folder / f"stage_{stage}.pt")
    complete = _complete(directory, stages)
    if len(complete) > KEEP:  # older steps, finished or not, are no longer needed
        for old in _steps(directory):
            if old < complete[-KEEP]:
                shutil.rmtree(directory / f"step_{old}", ignore_errors=True)


def newest_complete(directory: Path, stages: int) -> int | None:
    """The newest step every stage has a checkpoint for (None if there is none)."""
    complete = _complete(directory, stages)
    return complete[-1] if complete else None


def _fields(record: Any) -> dict[str, Any]:
    """A record's fields by name, the values themselves (`asdict` would copy every tensor)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


def identity(plan_sha256: str, schedule: str, optimizer: str) -> Identity:
    return Identity(plan_sha256=plan_sha256, schedule=schedule, optimizer_kind=optimizer)


def check_resumable(directory: Path, step: int, replicas: Sequence[int], wanted: Identity) -> None:
    """Before any process starts: every stage's checkpoint at `step` is a whole vpipe
    checkpoint of this run's plan, schedule, optimizer and replicas (`replicas[k]`: stage k's
    count), read lazily (its tensors stay on disk), so a refused resume touches nothing in the
    run directory."""
    for stage, count in enumerate(replicas):
        path = directory / f"step_{step}" / f"stage_{stage}.pt"
        saved = len(_read(path, wanted, None).stage.replicas)
        if saved != count:
            raise VpipeError(
                f"{path} was written by {saved} replica{'s' * (saved != 1)} of stage {stage}, "
                f"and pipeline.yaml gives it {count}: resume with the pipeline that wrote it, "
                "or choose another --checkpoint-dir"
            )


def load(
    directory: Path,
    step: int,
    stage: int,
    updater: Updater,
    wanted: Identity,
    expected: StageTensors,
    device: torch.device,
) -> tuple[StageState, int]:
    """The stage's record at `step` (see `StageExecutor.snapshot`), its tensors on `device`
    (each replica's own, not the writer's), and the length of the run that wrote it; `updater`
    takes its state. Every tensor in it is checked against the stage's own (`expected`) before
    anything is taken."""
    path = directory / f"step_{step}" / f"stage_{stage}.pt"
    state = _read(path, wanted, device)
    _check_tensors(state, expected, path)
    updater.state, updater.steps = state.optimizer, state.optimizer_steps
    return state.stage, state.run_steps


def _read(path: Path, wanted: Identity, device: torch.device | None) -> Checkpoint:
    """A checkpoint file that loads, of this version and of the run `wanted` describes: its
    tensors on `device`, or left on disk (memory-mapped) for None."""
    try:
        if device is None:
            state = torch.load(path, weights_only=True, mmap=True)
        else:
            state = torch.load(path, weights_only=True, map_location=device)
    except Exception as err:  # truncated, overwritten, not a checkpoint
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise VpipeError(
            f"{path} cannot be read, it is damaged ({type(err).__name__}: {reason[:120]}); "
            f"{_remedy(path)}"
        ) from None
    if not isinstance(state, dict) or not {"plan_sha256", "schema_version"} & set(state):
        raise VpipeError(f"{path} is not a vpipe checkpoint; {_remedy(path)}")
    version = state.get("schema_version")
    if version != SCHEMA_VERSION:
        newer = isinstance(version, int) and version > SCHEMA_VERSION
        raise VpipeError(
            f"{path} was written by {'a newer' if newer else 'an older'} vpipe (schema_version "
            f"{version}, this vpipe's is {SCHEMA_VERSION}); start again without --resume"
        )
    body = {k: v for k, v in state.items() if k != "schema_version"}
    checkpoint = decode(Checkpoint, body, str(path), "vpipe checkpoint", _remedy(path))
    for key, value in _fields(wanted).items():
        if getattr(checkpoint, key) != value:
            raise VpipeError(f"{path} {MISMATCH[key].format(getattr(checkpoint, key))}")
    return checkpoint


def _check_tensors(state: Checkpoint, expected: StageTensors, path: Path) -> None:
    """Weights, each stashed version, buffers and optimizer state: named and shaped as the
    stage's (a checkpoint of another vpipe, or edited, fails here, not inside the replay)."""
    remedy = _remedy(path)
    record = state.stage
    check_tensors(record.weights, expected.weights, f"{path} (weights)", remedy)
    for k, version in enumerate(record.versions):
        check_tensors(version, expected.weights, f"{path} (stashed version {k})", remedy)
    for k, replica in enumerate(record.replicas):
        check_tensors(replica.buffers, expected.buffers, f"{path} (buffers of replica {k})", remedy)
    optimizer = state.optimizer
    if not isinstance(optimizer, dict) or not set(optimizer) <= set(expected.weights):
        raise VpipeError(f"{path}: its optimizer state is not for this stage's weights; {remedy}")
    for name, moments in optimizer.items():
        like = dict.fromkeys(moments, expected.weights[name]) if isinstance(moments, dict) else {}
        check_tensors(moments, like, f"{path} (optimizer state of {name})", remedy)


def _remedy(path: Path) -> str:
    """What to do about a damaged checkpoint file."""
    return f"delete {path.parent} to resume from the step before, or start again without --resume"


def holds_any(directory: Path) -> bool:
    return bool(_steps(directory))


def _complete(directory: Path, stages: int) -> list[int]:
    return [
        s
        for s in _steps(directory)
        if all((directory / f"step_{s}" / f"stage_{k}.pt").is_file() for k in range(stages))
    ]


def _steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name.removeprefix("step_"))
        for p in directory.iterdir()
        if p.is_dir() and p.name.removeprefix("step_").isdigit()
    )
