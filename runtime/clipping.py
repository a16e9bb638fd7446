"""Gradient clipping by global norm across the stages, as torch.nn.utils.clip_grad_norm_ clips
one model in one process.

Under 1f1b and gpipe every stage updates once per step, on the gradients of the same
micro-batches: each stage takes the squared norm of its own gradients, an all-reduce over the
stages (a group of its own, beside the pipeline's messages) sums them, and every stage scales
by the same max_norm / (norm + 1e-6), at most 1. A tied parameter's copies hold one summed
gradient, counted once, on the first stage that holds it. A stage's data-parallel replicas hold
one summed gradient too (runtime/replicas.py sums them first): every process is in the group,
and each replica counts 1/r of its stage's squared norm.

Under asp a stage's n-th update comes S - 1 - s micro-batches after the last stage's: the
gradients of one micro-batch never exist on all stages at once. Waiting for every stage's part
of micro-batch n would make the last stage wait for the first at every update (a flush per
micro-batch), and using the norm of an older, complete micro-batch would let the gradient of
this one through unclipped however large it is. So under asp each stage clips its own gradients
by their own norm: every update a stage makes is bounded by max_norm (the whole model's
gradient by sqrt(S) x max_norm), at once; on one stage it is clip_grad_norm_ exactly.

Under asp a stage's replicas update together on one summed gradient (the update's r
micro-batches: runtime/replicas.py), which they clip by its norm, the stage's rule: each counts
1/r of its squared norm in an all-reduce over the stage's replicas (the group of their
gradients' sum; a stage on one process communicates nothing). Each replica could take the norm
of the same tensors alone, but a norm is a reduction whose rounding depends on the thread
count, which may differ between machines: the all-reduce hands every replica the same number,
so they stay bit-identical by construction, for one number's latency beside the gradients'.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from vpipe.codegen.schema import Pipeline

Weights = dict[str, torch.Tensor]


class GlobalNormClipper:
    def __init__(
        self,
        pipeline: Pipeline,
        stage: int,
        schedule: str,
        max_norm: float,
        device: torch.device,
        replicas: dist.ProcessGroup | None,
    ) -> None:
        """Every rank constructs it, in the same order relative to other groups (new_group is
        collective). `replicas`: the group of the stage's replicas (None on one process), whose
        norm asp shares."""
        self.max_norm, self.device = max_norm, device
        ranks = sorted(rank for spec in pipeline.stages for rank in spec.ranks)
        self.group = replicas
        if schedule != "asp" and len(ranks) > 1:
            self.group = dist.new_group(ranks)
        self.share = 1 / len(pipeline.stages[stage].ranks)  # of the stage's squared norm
        held = set(pipeline.stages[stage].parameters)
        # a tied parameter's later copies hold the same summed gradient as its owner under the
        # synchronous schedules: counted once, there; under asp each copy's gradient is its
        # stage's own, clipped with the rest
        self.not_counted = {
            name
            for tied in pipeline.tied
            if schedule != "asp" and stage in tied.stages and stage != min(tied.stages)
            for name in tied.names
            if name in held
        }

    def clip(self, grads: Weights, owned: bool) -> Weights:
        """`grads` scaled so that the global norm is at most max_norm: in place when `owned`
        (the step's running sum, which nothing else holds), else into new tensors (autograd's
        own gradients, which may be the very tensors sent to the previous stage)."""
        counted = [g for n, g in grads.items() if n not in self.not_counted]
        squared = torch.zeros((), device=self.device)  # a stage may hold no weights
        if counted:
            squared = torch.nn.utils.get_total_norm(counted) ** 2
        if self.group is not None:
            squared = squared * self.share
            dist.all_reduce(squared, group=self.group)
        scale = torch.clamp(self.max_norm / (squared.sqrt() + 1e-6), max=1.0)
        if owned:
            for grad in grads.values():
                grad.mul_(scale)
            return grads
        return {n: g * scale for n, g in grads.items()}
