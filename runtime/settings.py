"""The settings of one training run, and run/settings.yaml, where the run records them for
`--report` (no torch here, so `vpipe-train --help` and `--report` stay quick)."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

from vpipe.common.optimizers import DEFAULT_LR
from vpipe.common.paths import recorded_path, resolved_path
from vpipe.common.records import Count, NonNegative, Positive, decode
from vpipe.common.yamlfile import check_header, load_yaml, save_yaml

SCHEMA_VERSION = 3  # of run/settings.yaml (2: switch_plan, adapt, adapt_every; 3: bind_cores)
LR_SCHEDULES = ("constant", "linear", "cosine")
WHAT = "run settings file"


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    pipeline: str  # path of pipeline.yaml
    schedule: str
    optimizer: str
    steps: Positive = 10  # M micro-batches each under 1f1b and gpipe, one under asp
    lr: float  # given, or DEFAULT_LR of the optimizer
    momentum: NonNegative = 0.9
    weight_decay: NonNegative = 0.0  # L2 for sgd, momentum and adam; decoupled for adamw
    lr_schedule: str = "constant"  # after the warm-up: keep lr, or decay it to min_lr
    warmup_steps: Count = 0  # steps whose lr rises linearly from 0 to lr
    min_lr: NonNegative = 0.0  # where linear and cosine decay end, at the last step
    clip_grad_norm: float | None = None  # max global gradient norm; None: no clipping
    skip_nonfinite: bool = False  # skip a step with a non-finite loss or gradient, not stop
    print_every: Positive = 10
    threads: Count = 0  # per process; 0: the machine's cores shared out evenly (bound: its own)
    bind_cores: bool = False  # pin each process of a machine to its own cores (runtime/cores.py)
    steps_per_epoch: Count = 0  # for the "Epoch e, Iteration i" lines; 0: one endless epoch
    checkpoint_dir: str = ""  # where checkpoints go ("": <pipeline dir>/run/checkpoints)
    checkpoint_every: Count = 0  # steps between checkpoints; 0: none
    resume: bool = False  # continue from the newest checkpoint every stage finished
    timeout_s: float = 300.0
    measure_memory: bool = False  # count live tensor bytes on CPU (slow; CUDA always measures)
    switch_plan: tuple[str, ...] = ()  # "STEP:PLAN": after step STEP, run plan file PLAN
    adapt: bool = False  # re-plan from the stages' measured speeds and switch while training
    adapt_every: Positive = 20  # steps between --adapt's checks

    @property
    def run_dir(self) -> Path:
        return Path(self.pipeline).parent / "run"

    @property
    def checkpoints(self) -> Path:
        return Path(self.checkpoint_dir) if self.checkpoint_dir else self.run_dir / "checkpoints"


def microbatches_per_step(settings: RunSettings, microbatches: int) -> int:
    """A step is M micro-batches and one update under 1f1b and gpipe; one micro-batch under asp."""
    return 1 if settings.schedule == "asp" else microbatches


def defaults() -> dict[str, object]:
    """The settings a run config or a flag may set, with their defaults (None: the plan's; for
    lr, the optimizer's; for clip_grad_norm, no clipping)."""
    return {
        f.name: None if f.default is MISSING else f.default
        for f in fields(RunSettings)
        if f.name != "pipeline"
    }


def learning_rate(lr: float | None, optimizer: str) -> float:
    """The rate a run uses: the one given, else the optimizer's default."""
    return DEFAULT_LR[optimizer] if lr is None else lr


def save_settings(settings: RunSettings, path: Path) -> None:
    """run/settings.yaml; its paths relative to run/, like every path a vpipe file records."""
    used = asdict(settings)
    used["pipeline"] = recorded_path(settings.pipeline, path)
    if settings.checkpoint_dir:
        used["checkpoint_dir"] = recorded_path(settings.checkpoint_dir, path)
    save_yaml({"schema_version": SCHEMA_VERSION, **used}, path)


def load_settings(path: Path, remedy: str) -> RunSettings:
    """run/settings.yaml as the run wrote it, its paths as seen from here; `remedy`: the
    command that writes a good one."""
    data = load_yaml(path, "run settings")
    check_header(data, SCHEMA_VERSION, str(path), WHAT, remedy)
    body = {k: v for k, v in data.items() if k != "schema_version"}
    settings = decode(RunSettings, body, str(path), WHAT, remedy)
    checkpoints = settings.checkpoint_dir
    return replace(
        settings,
        pipeline=resolved_path(settings.pipeline, path),
        checkpoint_dir=resolved_path(checkpoints, path) if checkpoints else "",
    )
