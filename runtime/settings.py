"""The settings of one training run (no torch here, so `vpipe-train --help` stays quick)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class RunSettings:
    pipeline: str  # path of pipeline.yaml
    schedule: str
    optimizer: str
    steps: int = 10  # M micro-batches each under 1f1b and gpipe, one under asp
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    print_every: int = 10
    threads: int = 0  # per process; 0: the machine's cores shared out evenly
    steps_per_epoch: int = 0  # for the "Epoch e, Iteration i" lines; 0: one endless epoch
    checkpoint_dir: str = ""  # where checkpoints go ("": <pipeline dir>/run/checkpoints)
    checkpoint_every: int = 0  # steps between checkpoints; 0: none
    resume: bool = False  # continue from the newest checkpoint every stage finished
    timeout_s: float = 300.0
    measure_memory: bool = False  # count live tensor bytes on CPU (slow; CUDA always measures)

    @property
    def run_dir(self) -> Path:
        return Path(self.pipeline).parent / "run"

    @property
    def checkpoints(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else self.run_dir / "checkpoints"


def defaults() -> dict[str, object]:
    """The settings a run config or a flag may set, with their defaults (None: the plan's)."""
    return {
        f.name: None if f.default is MISSING else f.default
        for f in fields(RunSettings)
        if f.name != "pipeline"
    }
