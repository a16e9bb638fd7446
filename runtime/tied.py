"""Tied parameters: one tensor of the model held by several stages, kept equal by summing.

Each owner computes the gradient of its own use; before every update the owners add their
gradients (an all-reduce in a group of just those ranks), so all copies take the same step from
the same value and stay equal, as Megatron does for tied embeddings. That needs the owners to
update in lockstep, which the synchronous schedules do (one update per step) and asp does not:
there each stage updates after its own backwards, at different times, so tied parameters across
stages are refused under asp.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vpipe.codegen.schema import Pipeline
from vpipe.common.errors import VpipeError


def check_schedule(pipeline: Pipeline, schedule: str) -> None:
    if pipeline.tied and schedule == "asp":
        names = ", ".join("/".join(t.names) for t in pipeline.tied)
        raise VpipeError(
            f"tied parameters across stages ({names}) need the stages to update together: "
            "use --schedule 1f1b or gpipe, or re-plan so one stage holds both uses"
        )


class TiedGradients:
    def __init__(self, pipeline: Pipeline, stage: int, schedule: str) -> None:
        check_schedule(pipeline, schedule)
        self.mine: list[tuple[str, dist.ProcessGroup]] = []
        for tied in pipeline.tied:  # every rank creates every group, in the same order
            group = dist.new_group(list(tied.stages))
            if stage in tied.stages:
                held = [n for n in tied.names if n in pipeline.stages[stage].parameters]
                self.mine.append((held[0], group))

    def sum(self, grads: dict[str, torch.Tensor]) -> None:
        """Add the other owners' gradients into `grads`, in place."""
        for name, group in self.mine:
            dist.all_reduce(grads[name], group=group)
