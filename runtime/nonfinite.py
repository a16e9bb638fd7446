"""Never train silently wrong: a non-finite loss or gradient stops the run, or, with
--skip-nonfinite, the step is skipped as torch.amp.GradScaler skips one.

The last stage checks each micro-batch's loss (a number it reads anyway); every stage checks,
once per update, the gradients that update would apply (`all_finite`: each one's least and
largest value, which are nan or inf exactly when one of its values is).

- By default the stage that finds one raises `VpipeError`, naming the step and micro-batch, before
  any update or checkpoint of that step: `runtime.launch` prints it as the stage's one error
  line and the launcher stops the other stages.
- With `skip` (1f1b and gpipe only) a step whose loss or gradients are non-finite on any process
  is skipped by every process: an all-reduce of one flag over them all (every replica of every
  stage), in a group of its own, before the update, so no two disagree about which steps they
  applied. A stage's replicas check the same summed gradients, but a loss is seen only by the
  last stage's replica that ran its micro-batch, and a loss can be nan while every gradient is
  finite (cross_entropy over a micro-batch whose labels are all ignored: 0 / 0, gradients 0): a
  replica deciding alone would skip a step its siblings apply, and the replicas would part. The
  optimizer does not step (its state and update count, and so the learning-rate schedule and
  Adam's bias correction, stay where they were).
- asp with `skip` is refused: each stage updates on its own after each backward, so skipping
  would have to reach the tied copies' staggered updates (`runtime.tied`) consistently.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from vpipe.common.errors import VpipeError
from vpipe.common.optim import all_finite

Weights = dict[str, torch.Tensor]
ADVICE = (
    "lower --lr, check make_batch for NaN/inf, try --clip-grad-norm, or --skip-nonfinite to "
    "skip such steps"
)


def check_supported(schedule: str, skip: bool) -> None:
    """Before any process starts: skipping is defined for the synchronous schedules only."""
    if skip and schedule == "asp":
        raise VpipeError(
            "--skip-nonfinite is not supported under --schedule asp (each stage updates on its "
            "own, so no step is skipped by every stage): use --schedule 1f1b or gpipe, or train "
            "without it (a non-finite loss or gradient then stops the run)"
        )


class NonFiniteGuard:
    def __init__(
        self,
        processes: int,
        per_step: int,
        device: torch.device,
        skip: bool = False,
    ) -> None:
        """`processes`: the run's, every replica of every stage; `per_step`: micro-batches per
        update. With `skip` every rank constructs it, in the same order relative to other
        groups (new_group is collective)."""
        self.per_step, self.device, self.skip = per_step, device, skip
        self.group = dist.new_group(list(range(processes))) if skip and processes > 1 else None
        self.bad_loss: int | None = None  # this step's first micro-batch with a non-finite loss
        self.skipped = 0  # steps skipped so far, a checkpoint's included

    def loss(self, value: float, i: int) -> None:
        """Micro-batch i's loss, on the last stage."""
        if math.isfinite(value):
            return
        if not self.skip:
            raise VpipeError(
                f"non-finite loss at step {i // self.per_step}, micro-batch {i} (loss {value}; "
                f"make_batch's step {i}); {ADVICE}"
            )
        if self.bad_loss is None:
            self.bad_loss = i

    def allows(self, grads: Weights, i: int) -> bool:
        """Whether the update of micro-batch i's step may apply `grads`; False: skip it."""
        finite = all_finite(grads) and self.bad_loss is None
        self.bad_loss = None
        if not self.skip:
            if not finite:
                raise VpipeError(f"non-finite gradient at {self._where(i)}; {ADVICE}")
            return True
        flag = torch.tensor(0.0 if finite else 1.0, device=self.device)
        if self.group is not None:
            dist.all_reduce(flag, group=self.group)
        if flag.item():
            self.skipped += 1
            return False
        return True

    def _where(self, i: int) -> str:
        step = i // self.per_step
        if self.per_step == 1:
            return f"step {step}, micro-batch {i} (a gradient is nan or inf)"
        first, last = step * self.per_step, (step + 1) * self.per_step - 1
        return f"step {step}, micro-batches {first}-{last} (a gradient of their sum is nan or inf)"
