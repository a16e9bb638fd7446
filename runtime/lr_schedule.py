"""The learning rate over a run: linear warm-up from 0, then constant, or linear or cosine decay
to a floor at the last step. The factors are those of Hugging Face transformers'
get_constant_schedule_with_warmup, get_linear_schedule_with_warmup and
get_cosine_with_min_lr_schedule_with_warmup (Megatron's warm-up and decay have the same shape),
given per update as torch.optim.lr_scheduler.LambdaLR applies a lambda."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LrSchedule:
    kind: str  # constant, linear or cosine
    warmup: int  # updates whose rate rises linearly from 0
    total: int  # updates in the run: the decay reaches the floor after the last
    floor: float = 0.0  # min_lr / lr: where linear and cosine decay end

    def factor(self, update: int) -> float:
        """The multiple of the peak rate that update `update` (0-based) uses."""
        if update < self.warmup:
            return update / max(1, self.warmup)
        if self.kind == "constant":
            return 1.0
        span = max(1, self.total - self.warmup)
        if self.kind == "linear":
            decay = max(0.0, (self.total - update) / span)
        else:
            progress = (update - self.warmup) / span
            decay = max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
        return decay * (1 - self.floor) + self.floor
