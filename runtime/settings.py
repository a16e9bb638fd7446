"""The settings of one training run (no torch here, so `vpipe-train --help` stays quick)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

# The learning rate each optimizer gets unless told: torch.optim's default for Adam and AdamW
# (what Hugging Face's and Megatron's examples start from), 0.01 for SGD.
DEFAULT_LR = {"sgd": 0.01, "momentum": 0.01, "adam": 1e-3, "adamw": 1e-3}
LR_SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class RunSettings:
    pipeline: str  # path of pipeline.yaml
    schedule: str
    optimizer: str
    steps: int = 10  # M micro-batches each under 1f1b and gpipe, one under asp
    lr: float | None = None  # None: DEFAULT_LR of the optimizer
    momentum: float = 0.9
    weight_decay: float = 0.0  # L2 for sgd, momentum and adam; decoupled for adamw
    lr_schedule: str = "constant"  # after the warm-up: keep lr, or decay it to min_lr
    warmup_steps: int = 0  # steps whose lr rises linearly from 0 to lr
    min_lr: float = 0.0  # where linear and cosine decay end, at the last step
    clip_grad_norm: float | None = None  # max global gradient norm; None: no clipping
    skip_nonfinite: bool = False  # skip a step with a non-finite loss or gradient, not stop
    print_every: int = 10
    threads: int = 0  # per process; 0: the machine's cores shared out evenly
    steps_per_epoch: int = 0  # for the "Epoch e, Iteration i" lines; 0: one endless epoch
    checkpoint_dir: str = ""  # where checkpoints go ("": <pipeline dir>/run/checkpoints)
    checkpoint_every: int = 0  # steps between checkpoints; 0: none
    resume: bool = False  # continue from the newest checkpoint every stage finished
    timeout_s: float = 300.0
    measure_memory: bool = False  # count live tensor bytes on CPU (slow; CUDA always measures)

    def __post_init__(self) -> None:
        if self.lr is None:  # settings.yaml then records the rate the run used
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])

    @property
    def run_dir(self) -> Path:
        return Path(self.pipeline).parent / "run"

    @property
    def checkpoints(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else self.run_dir / "checkpoints"


def defaults() -> dict[str, object]:
    """The settings a run config or a flag may set, with their defaults (None: the plan's; for
    lr, the optimizer's; for clip_grad_norm, no clipping)."""
    return {
        f.name: None if f.default is MISSING else f.default
        for f in fields(RunSettings)
        if f.name != "pipeline"
    }
