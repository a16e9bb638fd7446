"""The optimizers vpipe trains with, by name, and what each part needs to know of them: the
profiler and planner count their state, `vpipe-train` picks their learning rate. No torch here
(the planner and `vpipe-train --help` read it); the update rules are in common/optim.py."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimizerKind:
    state_factor: int  # optimizer-state bytes kept per trainable parameter byte
    # vpipe-train's learning rate unless told: torch.optim's default for Adam and AdamW (what
    # Hugging Face's and Megatron's examples start from), 0.01 for SGD
    default_lr: float


KINDS = {
    "sgd": OptimizerKind(state_factor=0, default_lr=0.01),
    "momentum": OptimizerKind(state_factor=1, default_lr=0.01),  # one buffer
    "adam": OptimizerKind(state_factor=2, default_lr=1e-3),  # two moments
    "adamw": OptimizerKind(state_factor=2, default_lr=1e-3),
}
OPTIMIZERS = tuple(KINDS)
OPTIMIZER_STATE_FACTOR = {name: kind.state_factor for name, kind in KINDS.items()}
DEFAULT_LR = {name: kind.default_lr for name, kind in KINDS.items()}
