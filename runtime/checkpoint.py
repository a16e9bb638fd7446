"""Per-stage checkpoints at step boundaries, and finding the newest one every stage finished.

Each stage writes `<dir>/step_<n>/stage_<k>.pt` through a temporary file and a rename, so a
kill mid-write leaves the previous checkpoint whole. A step counts only when every stage's file
for it exists; resume takes the newest such step. Under the synchronous schedules nothing is in
flight at a step boundary, so weights, optimizer state, the step and the RNG state are all there
is to save (asp checkpoints, which must also hold the stashed versions, are not built yet).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from vpipe.common.errors import VpipeError
from vpipe.runtime.optim import Updater

KEEP = 2  # newest complete steps kept; older ones are removed


def save(directory: Path, step: int, stage: int, weights, updater: Updater, plan_sha256: str):
    folder = directory / f"step_{step}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"stage_{stage}.pt"
    tmp = folder / f".stage_{stage}.pt.tmp"
    state = {
        "plan_sha256": plan_sha256,
        "step": step,
        "weights": {n: t.detach() for n, t in weights.items()},
        "optimizer": updater.state,
        "optimizer_steps": updater.steps,
        "rng": torch.get_rng_state(),
    }
    torch.save(state, tmp)
    os.replace(tmp, path)
    for old in _steps(directory)[:-KEEP]:
        shutil.rmtree(directory / f"step_{old}", ignore_errors=True)


def newest_complete(directory: Path, stages: int) -> int | None:
    """The newest step every stage has a checkpoint for (None if there is none)."""
    done = [
        s
        for s in _steps(directory)
        if all((directory / f"step_{s}" / f"stage_{k}.pt").is_file() for k in range(stages))
    ]
    return done[-1] if done else None


def load(directory: Path, step: int, stage: int, updater: Updater, plan_sha256: str):
    """The stage's weights at `step`; `updater` takes its saved state."""
    path = directory / f"step_{step}" / f"stage_{stage}.pt"
    state = torch.load(path, weights_only=True)
    if state["plan_sha256"] != plan_sha256:
        raise VpipeError(
            f"{path} belongs to another plan (its plan sha256 differs); resume with the "
            "pipeline that wrote it, or choose another --checkpoint-dir"
        )
    updater.state, updater.steps = state["optimizer"], state["optimizer_steps"]
    torch.set_rng_state(state["rng"])
    return state["weights"]


def _steps(directory: Path) -> list[int]:
    if not directory.is_dir():
        return []
    return sorted(
        int(p.name.removeprefix("step_"))
        for p in directory.iterdir()
        if p.is_dir() and p.name.removeprefix("step_").isdigit()
    )
