"""A stage's data-parallel replicas summing their gradients before each update, so that each
applies the same update and they stay identical (`common.replicas` says when they update).

One all-reduce per update, over a process group of just the stage's ranks, of every gradient
laid end to end (one flat buffer per dtype: a collective per tensor would pay gloo's latency
dozens of times). The buffer is a new tensor, so autograd's own gradients, which may be the very
tensors sent to the previous stage, are never written. On the last stage the update's
micro-batches' losses travel in the same all-reduce, each replica giving its own and zeros for
the others', so every replica, and its first, which writes the metrics, has them all in order:
no message of their own, nothing to wait for beyond the update itself.

A checkpoint is one file per stage: its replica 0 gathers what each replica holds of its own
over the same group (`gather`) and writes it with the shared rest (`runtime.checkpoint`).

What replicated stages do not support yet is refused before any process starts
(`check_replicated`), never left to hang or to train something else.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist

from vpipe.codegen.schema import Pipeline
from vpipe.common.errors import VpipeError
from vpipe.common.replicas import run_lengths
from vpipe.runtime.checkpoint import ReplicaState
from vpipe.runtime.failures import LostPeer, first_line
from vpipe.runtime.links import wire_device
from vpipe.runtime.placement import Placement
from vpipe.runtime.settings import RunSettings

Weights = dict[str, torch.Tensor]


class ReplicaGroup:
    def __init__(
        self, pipeline: Pipeline, placement: Placement, device: torch.device, timeout: timedelta
    ) -> None:
        """Every rank constructs it, before any other group (new_group is collective: every
        rank creates every replicated stage's group, in stage order). `timeout`: the run's
        (a new group's default is torch's, not the one the process group was started with)."""
        self.count, self.device = placement.replicas, device
        self.stage, self.ranks, self.replica = (
            placement.stage,
            list(placement.ranks),
            placement.replica,
        )
        self.group = None
        for spec in pipeline.stages:
            if len(spec.ranks) > 1:
                group = dist.new_group(list(spec.ranks), timeout=timeout)
                if spec.index == placement.stage:
                    self.group = group

    def sum(self, grads: Weights, losses: Sequence[float]) -> tuple[Weights, list[float]]:
        """`grads` and `losses` (this replica's, zeros for the others' micro-batches) summed over
        the stage's replicas; as given on a stage with one process."""
        if self.group is None:
            return grads, list(losses)
        names = list(grads)
        tensors = [grads[n] for n in names]
        if losses:
            tensors.append(torch.tensor(losses, dtype=torch.float64, device=self.device))
        try:
            summed = _all_reduced(tensors, self.group)
        except RuntimeError as err:  # a replica died, or the run's timeout passed
            raise LostPeer(
                f"lost a replica of stage {self.stage} (ranks {self.ranks}) in the all-reduce "
                f"before an update: {first_line(err)}"
            ) from None
        totals = summed.pop().tolist() if losses else []
        return dict(zip(names, summed, strict=True)), totals

    def gather(self, part: ReplicaState) -> tuple[ReplicaState, ...] | None:
        """Every replica's `part` of a checkpoint, in replica order, on replica 0, which writes
        the stage's file; None on the others. The parts are alike in layout (the same buffers,
        random states and count of micro-batches in flight: `StageExecutor.snapshot`), so each
        replica lays its own part's bytes in its row of a zeroed buffer and one all-reduce,
        like the update's, sums the rows: every byte arrives exact, in host memory (a replica's
        GPU is not its first's; each loads the file onto its own device). An all-reduce, not
        gloo's gather, which after a replica's death sometimes aborted the process on exit."""
        if self.group is None:
            return (part,)
        own = torch.cat([_bytes(t) for t in _tensors(part)])
        rows = torch.zeros(self.count, own.numel(), dtype=torch.uint8)
        rows[self.replica] = own
        rows = rows.to(wire_device(self.device))
        try:
            dist.all_reduce(rows, group=self.group)
        except RuntimeError as err:  # a replica died, or the run's timeout passed
            raise LostPeer(
                f"lost a replica of stage {self.stage} (ranks {self.ranks}) while gathering a "
                f"checkpoint: {first_line(err)}"
            ) from None
        return tuple(_rebuilt(part, row) for row in rows.cpu()) if self.replica == 0 else None


def _tensors(part: ReplicaState) -> list[torch.Tensor]:
    """A part's contents as tensors, in the order `_rebuilt` takes them back."""
    numbers = torch.tensor([i for i, _, _ in part.in_flight], dtype=torch.int64)
    states = [t for _, _, state in part.in_flight for t in state.values()]
    return [numbers, *part.buffers.values(), *part.rng.values(), *states]


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)


def _rebuilt(like: ReplicaState, row: torch.Tensor) -> ReplicaState:
    """The part whose bytes `row` holds, laid out as `like`."""
    layout = _tensors(like)
    sizes = [t.numel() * t.element_size() for t in layout]
    chunks = row.split(sizes)
    tensors = iter(
        chunk.clone().view(t.dtype).reshape(t.shape)
        for chunk, t in zip(chunks, layout, strict=True)
    )

    def taken(names: Mapping[str, torch.Tensor]) -> Weights:
        return {name: next(tensors) for name in names}

    numbers = next(tensors).tolist()
    buffers, rng = taken(like.buffers), taken(like.rng)
    in_flight = tuple(
        (m, version, taken(state))
        for m, (_, version, state) in zip(numbers, like.in_flight, strict=True)
    )
    return ReplicaState(buffers, in_flight, rng)


def _all_reduced(tensors: list[torch.Tensor], group: dist.ProcessGroup) -> list[torch.Tensor]:
    """`tensors` summed over `group`, as new tensors: one all-reduce per dtype of a buffer that
    holds them end to end (in host memory under gloo on a GPU, as the links send)."""
    out: list[torch.Tensor] = list(tensors)
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        chosen = [k for k, t in enumerate(tensors) if t.dtype == dtype]
        flat = torch.cat([tensors[k].detach().reshape(-1) for k in chosen])
        wire = wire_device(flat.device)
        flat = flat.to(wire)
        dist.all_reduce(flat, group=group)
        flat = flat.to(tensors[chosen[0]].device)
        parts = flat.split([tensors[k].numel() for k in chosen])
        for k, part in zip(chosen, parts, strict=True):
            out[k] = part.view_as(tensors[k])
    return out


def check_replicated(settings: RunSettings, pipeline: Pipeline) -> None:
    """Before any process starts, for a pipeline with a stage on several ranks: the options
    replicas do not support yet are refused, and so are the runs that would leave a stage's
    replicas without the same updates (an all-reduce that one of them never joins would wait
    for ever)."""
    replicas = [len(s.ranks) for s in pipeline.stages]
    if max(replicas) == 1:
        return
    shape = " + ".join(f"stage {k} x {r}" for k, r in enumerate(replicas))
    if pipeline.tied and settings.schedule == "asp":
        names = ", ".join("/".join(t.names) for t in pipeline.tied)
        raise VpipeError(
            f"parameters tied across stages ({names}) under asp: not supported with replicated "
            f"stages yet ({shape} in {settings.pipeline}); train with --schedule 1f1b or "
            "gpipe, or plan a straight pipeline (vpipe-plan without --stages) and regenerate"
        )
    if settings.schedule != "asp" and pipeline.microbatches < max(replicas):
        raise VpipeError(
            f"{pipeline.microbatches} micro-batches per step leave a replica of a stage with "
            f"{max(replicas)} replicas ({shape}) without work in a step: re-plan with "
            f"--microbatches {max(replicas)} or more"
        )
    every = run_lengths(settings.schedule, replicas)
    # a checkpoint is taken after an update of every stage: a multiple of `every` steps too
    for option, steps in (
        ("--steps", settings.steps),
        ("--checkpoint-every", settings.checkpoint_every),
    ):
        if steps % every:
            lower = steps // every * every
            choices = f"{lower} or {lower + every}" if lower else str(every)
            raise VpipeError(
                f"{option} {steps}: under asp a stage with r replicas updates once every r "
                f"micro-batches ({shape}), so its replicas update alike only over a multiple of "
                f"{every} steps: use {option} {choices}"
            )


def weights_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 of named tensors' names, dtypes, shapes and bytes: the replicas of a stage log
    their final weights' digest, which agree when the replicas stayed identical."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)};".encode())
        flat = tensor.reshape(-1).contiguous().cpu()
        digest.update(flat.view(torch.uint8).numpy().data)
    return digest.hexdigest()
