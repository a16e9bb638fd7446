"""Per-stage checkpoints, and finding the newest one every stage finished.

Each stage writes `<dir>/step_<n>/stage_<k>.pt` right after its n-th optimizer step, through a
temporary file and a rename, so a kill mid-write leaves the previous checkpoint whole. A step
counts only when every stage's file for it exists; resume takes the newest such step. Under
1f1b and gpipe nothing is in flight then; under asp a stage also saves, for each micro-batch in
flight, the weight version its forward used (`StageExecutor.snapshot`), and resume rebuilds
those micro-batches from them (`StageExecutor.restore`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from vpipe.common.errors import VpipeError
from vpipe.common.optim import Updater
from vpipe.common.stages import check_tensors


@dataclass(frozen=True)
class StageTensors:
    """What a stage holds: its trainable weights and its buffers, by name."""

    weights: Mapping[str, torch.Tensor]
    buffers: Mapping[str, torch.Tensor]


# what a resume must match, and what to say when it does not
MISMATCH = {
    "plan_sha256": "belongs to another plan (its plan sha256 differs); resume with the pipeline "
    "that wrote it, or choose another --checkpoint-dir",
    "schedule": "was written under --schedule {}; resume with it",
    "optimizer_kind": "was written with --optimizer {}; resume with it",
}
KEEP = 2  # newest complete steps kept; older ones are removed


# what load needs of a checkpoint, and of its stage record (StageExecutor.snapshot)
FIELDS = ("plan_sha256", "schedule", "run_steps", "stage", "optimizer", "optimizer_steps")
STAGE_FIELDS = ("weights", "buffers", "versions", "in_flight", "rng")


def save(
    directory: Path,
    step: int,
    stage: int,
    stages: int,
    snapshot: dict,
    updater: Updater,
    identity: dict[str, str],
    run_steps: int,
) -> None:
    """`identity`: what a resume must match (the plan's sha256, the schedule); `run_steps`: the
    length of the run that writes it (under asp, whether it was draining)."""
    folder = directory / f"step_{step}"
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".stage_{stage}.pt.tmp"
    state = {
        **identity,
        "step": step,
        "run_steps": run_steps,
        "stage": snapshot,
        "optimizer": updater.state,
        "optimizer_steps": updater.steps,
    }
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


def identity(plan_sha256: str, schedule: str, optimizer: str) -> dict[str, str]:
    """What a checkpoint records of the run that wrote it, and a resume must match."""
    return {"plan_sha256": plan_sha256, "schedule": schedule, "optimizer_kind": optimizer}


def check_resumable(directory: Path, step: int, stages: int, wanted: dict[str, str]) -> None:
    """Before any process starts: every stage's checkpoint at `step` is a whole vpipe
    checkpoint of this run's plan, schedule and optimizer (read lazily: its tensors stay on
    disk), so a refused resume touches nothing in the run directory."""
    for stage in range(stages):
        _read(directory / f"step_{step}" / f"stage_{stage}.pt", wanted, mmap=True)


def load(
    directory: Path,
    step: int,
    stage: int,
    updater: Updater,
    wanted: dict[str, str],
    expected: StageTensors,
) -> tuple[dict, int]:
    """The stage's record at `step` (see `StageExecutor.snapshot`) and the length of the run
    that wrote it; `updater` takes its state. Every tensor in it is checked against the stage's
    own (`expected`) before anything is taken."""
    path = directory / f"step_{step}" / f"stage_{stage}.pt"
    state = _read(path, wanted, mmap=False)
    _check_tensors(state, expected, path)
    updater.state, updater.steps = state["optimizer"], state["optimizer_steps"]
    return state["stage"], state["run_steps"]


def _read(path: Path, wanted: dict[str, str], mmap: bool) -> dict:
    """A checkpoint file that loads, of the run `wanted` describes, with every field."""
    try:
        state = torch.load(path, weights_only=True, mmap=mmap)
    except Exception as err:  # truncated, overwritten, not a checkpoint
        reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise VpipeError(
            f"{path} cannot be read, it is damaged ({type(err).__name__}: {reason[:120]}); "
            f"delete {path.parent} to resume from the step before, or start again without "
            "--resume"
        ) from None
    if not isinstance(state, dict) or "plan_sha256" not in state:
        raise VpipeError(
            f"{path} is not a vpipe checkpoint; delete {path.parent} to resume from the step "
            "before, or start again without --resume"
        )
    older = sorted(set(wanted) - set(state))
    if older:
        raise VpipeError(
            f"{path} was written by an older vpipe (it records no {', '.join(older)}); start "
            "again without --resume"
        )
    for key, value in wanted.items():
        if state.get(key) != value:
            raise VpipeError(f"{path} {MISMATCH[key].format(state.get(key))}")
    missing = sorted(set(FIELDS) - set(state)) or sorted(
        set(STAGE_FIELDS) - set(state["stage"] if isinstance(state["stage"], dict) else ())
    )
    if missing:
        raise VpipeError(
            f"{path} is not a complete vpipe checkpoint (no {', '.join(missing)}); delete "
            f"{path.parent} to resume from the step before, or start again without --resume"
        )
    return state


def _check_tensors(state: dict, expected: StageTensors, path: Path) -> None:
    """Weights, each stashed version, buffers and optimizer state: named and shaped as the
    stage's (a checkpoint of another vpipe, or edited, fails here, not inside the replay)."""
    remedy = f"delete {path.parent} to resume from the step before, or start again without --resume"
    record = state["stage"]
    check_tensors(record["weights"], expected.weights, f"{path} (weights)", remedy)
    versions = record["versions"] if isinstance(record["versions"], list) else [None]
    for k, version in enumerate(versions):
        check_tensors(version, expected.weights, f"{path} (stashed version {k})", remedy)
    check_tensors(record["buffers"], expected.buffers, f"{path} (buffers)", remedy)
    optimizer = state["optimizer"]
    if not isinstance(optimizer, dict) or not set(optimizer) <= set(expected.weights):
        raise VpipeError(f"{path}: its optimizer state is not for this stage's weights; {remedy}")
    for name, moments in optimizer.items():
        like = dict.fromkeys(moments, expected.weights[name]) if isinstance(moments, dict) else {}
        check_tensors(moments, like, f"{path} (optimizer state of {name})", remedy)


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
