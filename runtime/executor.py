"""The one loop that walks a stage's actions: forwards, backwards, updates, weight stashing.

Weights are plain tensors in versions (name -> tensor), never a module's own parameters: a
forward runs the stage bound to the newest version (`runtime.binding`) and keeps a reference to
it; its backward asks autograd for gradients with respect to exactly that version. An update
writes into a new version while a micro-batch in flight still holds the current one, and into
the current one otherwise (`common.optim`), so a version a pending backward needs is never
modified; it is freed when no micro-batch in flight uses it. Under `asp` every backward is
followed by an update (PipeDream's weight stashing); under `1f1b` and `gpipe` gradients add up
over the step's M micro-batches and one update follows the last. A replicated stage's process
runs only its own micro-batches and sums its gradients with its stage's other replicas before
each update (`runtime.replicas`, `common.replicas`). Each update's gradients pass the tied
copies' sum (`runtime.tied`), the non-finite guard and the clipping first; the loop reports each
action (`runtime.events`), loss (in micro-batch order, at the update) and update through
callbacks, and gives its state to checkpoints (`snapshot`, `restore`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils import _pytree as pytree

from vpipe.codegen.schema import Pipeline
from vpipe.common.buffering import sums_gradients
from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import Batch, ModelFile
from vpipe.common.optim import Updater
from vpipe.common.replicas import closes_update, update_microbatches
from vpipe.common.schedules import FORWARD, Action
from vpipe.common.stages import load_stage, to_empty_tied
from vpipe.runtime import rng
from vpipe.runtime.binding import Slots
from vpipe.runtime.checkpoint import ReplicaState, StageState
from vpipe.runtime.events import ActionEvent
from vpipe.runtime.links import Links, carries_gradient
from vpipe.runtime.nonfinite import NonFiniteGuard
from vpipe.runtime.placement import world_size
from vpipe.runtime.replicas import ReplicaGroup
from vpipe.runtime.rng import RngState
from vpipe.runtime.tied import Summed, tied_parameters

Weights = dict[str, torch.Tensor]


@dataclass
class _InFlight:
    weights: Weights  # the version its forward used
    received: list[torch.Tensor]  # inputs from the previous stage (leaves)
    outputs: list[torch.Tensor]  # what it sent on, or [loss] on the last stage
    rng: RngState  # the random state its forward started from, to replay it on resume


class StageExecutor:
    def __init__(
        self,
        pipeline: Pipeline,
        directory: Path,
        index: int,
        model_file: ModelFile,
        updater: Updater,
        links: Links,
        replicas: ReplicaGroup,
        schedule: str,
        device: torch.device,
    ) -> None:
        """`index`: the stage; `replicas`: its replicas' all-reduce (made before the tied
        copies' groups, which this makes: every rank makes the groups in one order)."""
        self.pipeline, self.index, self.links = pipeline, index, links
        self.model_file, self.updater, self.schedule = model_file, updater, schedule
        self.last = index == len(pipeline.stages) - 1
        self.spec = pipeline.stages[index]
        self.module = load_stage(
            directory, self.spec.module, self.spec.weights, pipeline.model, device
        )
        self.device = device
        # after the model file is loaded: a ModelOutput's class registers itself with pytree
        self.output_spec = pytree.treespec_loads(pipeline.output_spec)
        self.weights: Weights = {
            name: p.detach().requires_grad_() for name, p in self.module.named_parameters()
        }
        self.buffers = dict(self.module.named_buffers())
        # the module is only a structure now (each call binds weights and buffers to it): its
        # own copies would keep the first weight version alive for the whole run
        to_empty_tied(self.module, "meta")
        self.slots = Slots(self.module)
        self.in_flight: dict[int, _InFlight] = {}
        self.accumulated: Weights = {}
        self.losses: dict[int, float] = {}  # last stage: its micro-batches' not yet reported
        self.replicas = replicas
        self.tied = tied_parameters(pipeline, index, replicas.replica, schedule, updater)
        self.peak_versions = 0  # the most weight versions alive at once
        # the last stage reports each micro-batch's loss, in order, at its update; every stage,
        # each update and each action's timing
        self.on_loss: Callable[[float], None] = lambda loss: None
        self.on_update: Callable[[int], None] = lambda updates: None
        self.on_event: Callable[[ActionEvent], None] = lambda event: None
        # each update's gradients pass through it (`runtime.clipping`); `owned`: nothing else
        # holds them, so they may be scaled in place
        self.clip: Callable[[Weights, bool], Weights] = lambda grads, owned: grads
        # a non-finite loss or gradient stops the run unless `runtime.launch` sets one that skips
        self.per_step = 1 if schedule == "asp" else pipeline.microbatches
        self.guard = NonFiniteGuard(world_size(pipeline), self.per_step, device)
        self._fixed = _Fixed.of(pipeline, index, schedule, device)

    def run(self, actions: Iterable[Action]) -> None:
        links, clock = self.links, time.perf_counter
        cpu_clock, main_clock = time.process_time, time.thread_time
        # on a GPU an action's kernels run after the call that launched them returns: its end
        # is when its stream is done, or the events would time the launches (runtime/report.py)
        settle = None
        if self.device.type == "cuda":
            settle = torch.cuda.current_stream(self.device).synchronize
        self._count_versions()
        for action in actions:
            start, waited, cpu, main = clock(), links.waited_s(), cpu_clock(), main_clock()
            if action.kind == FORWARD:
                self.forward(action.microbatch)
            else:
                self.backward(action.microbatch)
                self._count_versions()  # only an update makes a version; a forward uses one
            if settle:
                settle()
            end, cpu_s, main_s = clock(), cpu_clock() - cpu, main_clock() - main
            self.on_event(
                ActionEvent(
                    action.kind,
                    action.microbatch,
                    start,
                    end,
                    links.waited_s() - waited,
                    cpu_s,
                    main_s,
                )
            )
        self.weights = _trainable(self.tied.finish(_detached(self.weights)))  # asp's last copies
        self.links.flush()

    def _count_versions(self) -> None:
        """Keep `peak_versions`: the versions micro-batches in flight hold, and the newest."""
        alive = {id(f.weights) for f in self.in_flight.values()} | {id(self.weights)}
        self.peak_versions = max(self.peak_versions, len(alive))

    def snapshot(self) -> StageState | None:
        """What a checkpoint holds of this stage beside the optimizer, on its replica 0 (None on
        the others, which give it their part): the newest weights, and per micro-batch in
        flight (asp) the stashed version its forward used, a version several share saved once;
        and each replica's buffers, random state and micro-batches in flight, each with its
        version's index and the random state its forward started from. A stage's replicas
        hold the same versions in the same order (they apply the same updates, and the k-th
        micro-batch in flight on each follows the same update), so one list serves them all."""
        versions: list[Weights] = []
        index: dict[int, int] = {}
        in_flight = []
        for i, pending in sorted(self.in_flight.items()):
            if id(pending.weights) not in index:
                index[id(pending.weights)] = len(versions)
                versions.append(_detached(pending.weights))
            in_flight.append((i, index[id(pending.weights)], pending.rng))
        own = ReplicaState(
            buffers={n: b.detach().clone() for n, b in self.buffers.items()},
            in_flight=tuple(in_flight),
            rng=rng.get_state(),
        )
        parts = self.replicas.gather(own)
        if parts is None:
            return None
        for part in parts:  # the invariant above
            assert [v for _, v, _ in part.in_flight] == [v for _, v, _ in in_flight]
        return StageState(
            weights=_detached(self.weights),
            versions=tuple(versions),
            replicas=parts,
            skipped=self.guard.skipped,
        )

    def restore(self, saved: StageState, replica: int, microbatches: int) -> None:
        """Continue from `snapshot()`'s record as its replica `replica`: take its weights, then
        rebuild this replica's micro-batches that were in flight by running their forwards
        again on their stashed versions and random states (receiving and sending as they did),
        skipping any at or past `microbatches`, the run's end. Every process does this, so the
        messages that were in transit when the checkpoint was taken are sent again. Buffers
        (running statistics) are taken after the replay: the replayed forwards' updates are in
        them already."""
        if set(saved.weights) != set(self.weights):
            raise VpipeError(f"the checkpoint's weights for stage {self.index} are not its own")
        own = saved.replicas[replica]
        self.weights = _trainable(saved.weights)
        self.guard.skipped = saved.skipped
        versions = [_trainable(v) for v in saved.versions]
        for i, version, state in own.in_flight:
            if i < microbatches:
                rng.set_state(state)
                self.forward(i, versions[version])
        rng.set_state(own.rng)
        # new tensors, not copies into the old: the replayed forwards' graphs hold the old ones
        self.buffers = {name: own.buffers[name] for name in self.buffers}

    def adopt(self, weights: Weights, buffers: Weights, previous: StageExecutor) -> None:
        """Go on where `previous` (this stage under the plan before a switch, drained) left
        off: `weights` and `buffers` are what this stage holds now, kept or received
        (`runtime.switching`); the callbacks and counts carry over."""
        if set(weights) != set(self.weights) or set(buffers) != set(self.buffers):
            missing = sorted((set(self.weights) | set(self.buffers)) - set(weights) - set(buffers))
            raise VpipeError(
                f"stage {self.index} holds other tensors after the switch than its new plan's "
                f"module (missing: {', '.join(missing) or 'none'}); regenerate the plan"
            )
        self.weights = _trainable({n: weights[n].detach() for n in self.weights})
        self.buffers = {n: buffers[n] for n in self.buffers}
        self.guard.skipped = previous.guard.skipped
        self.peak_versions = previous.peak_versions
        self.on_loss, self.on_event = previous.on_loss, previous.on_event

    def forward(self, i: int, weights: Weights | None = None) -> None:
        """Micro-batch i's forward on `weights` (default: the newest version)."""
        state = rng.get_state()
        batch = self._batch(i) if self._fixed.needs_batch else None
        own = self._own_inputs(batch) if batch else []
        received = self.links.recv_activations()
        for tensor in received:
            if tensor.is_floating_point():
                tensor.requires_grad_()
        weights = self.weights if weights is None else weights
        with self.slots.bound(weights, self.buffers):
            outputs = self.module(*own, *received)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        self._check(outputs)
        if self.last:
            assert batch is not None  # the last stage always makes its batch, for the target
            output = self.model_output(outputs)
            loss = self.model_file.loss_fn(output, batch.target.to(self.device))
            value = loss.item()
            self.guard.loss(value, i)
            self.losses[i] = value
            outputs = (loss,)
        else:
            self.links.send_activations(outputs, i)
        self.in_flight[i] = _InFlight(weights, received, list(outputs), state)

    def backward(self, i: int) -> None:
        grads, sent = self._gradients(self.in_flight.pop(i))
        if self.index > 0:
            self.links.send_gradients(sent, i)
        # the micro-batch's weight version is let go before the update makes the next one
        self._apply(grads, i)

    def _gradients(self, pending: _InFlight) -> tuple[Weights, list[torch.Tensor]]:
        """Micro-batch `pending`'s gradients: for its weight version, and for its received
        inputs (to send back)."""
        if self._fixed.seed is not None:  # the last stage
            roots, seeds = pending.outputs, [self._fixed.seed]
        else:
            floats = [o for o, c in zip(pending.outputs, self._fixed.carries, strict=True) if c]
            incoming = self.links.recv_gradients()
            pairs = [(o, g) for o, g in zip(floats, incoming, strict=True) if o.requires_grad]
            roots, seeds = [o for o, _ in pairs], [g for _, g in pairs]
        names = list(pending.weights)
        wrt = [pending.weights[n] for n in names]
        leaves = [t for t in pending.received if t.is_floating_point()]
        inputs = wrt + leaves
        found: tuple[torch.Tensor | None, ...] = (None,) * len(inputs)
        if roots and inputs:  # a stage may hold no weights and take no float inputs
            with self._recomputing_on(pending.weights):
                found = torch.autograd.grad(roots, inputs, seeds, allow_unused=True)
        sent = [
            g if g is not None else torch.zeros_like(t)
            for g, t in zip(found[len(wrt) :], leaves, strict=True)
        ]
        grads = {
            n: g if g is not None else torch.zeros_like(pending.weights[n])
            for n, g in zip(names, found[: len(wrt)], strict=True)
        }
        return grads, sent

    def _recomputing_on(self, weights: Weights):
        """Backward recomputes checkpointed segments through the module's own attributes, which
        the forward's binding has put back: bind them to the version the forward used for as
        long as the backward runs."""
        if not self.spec.recompute:
            return contextlib.nullcontext()
        return self.slots.bound(weights, self.buffers)

    def _apply(self, grads: Weights, i: int) -> None:
        microbatches, replicas = self.pipeline.microbatches, self.replicas.count
        # the micro-batches this update completes on the stage, its replicas' included
        span = update_microbatches(self.schedule, microbatches, replicas, i)
        if sums_gradients(self.schedule):
            for name, grad in grads.items():  # in place: one running sum beside the new grads
                total = self.accumulated.get(name)
                if total is None:  # a copy: autograd may hand one tensor to several weights
                    self.accumulated[name] = grad.clone(memory_format=torch.contiguous_format)
                else:
                    total.add_(grad)
            if not closes_update(self.schedule, microbatches, replicas, i):
                return
            grads, self.accumulated = self._summed(self.accumulated, span), {}
            assert isinstance(self.tied, Summed)  # tied_parameters' choice for 1f1b and gpipe
            self.tied.sum(grads)
        else:
            grads = self._summed(grads, span)
        if self.guard.allows(grads, i):  # else a skipped step: no update, on any stage
            grads = self.clip(grads, self.schedule != "asp")  # the step's running sum is owned
            # in place unless a micro-batch in flight (asp) still needs this version
            held = any(pending.weights is self.weights for pending in self.in_flight.values())
            weights = self.tied.step(_detached(self.weights), grads, in_place=not held)
            self.weights = _trainable(weights)
        self.on_update(span.stop // self.per_step)  # steps done, skipped ones included

    def _summed(self, grads: Weights, span: range) -> Weights:
        """The gradients of the update that sums micro-batches `span`: this process's summed
        with its stage's other replicas'. The last stage reports their losses here, in order:
        a replica holds only its own."""
        losses = [self.losses.pop(m, 0.0) for m in span] if self.last else []
        grads, losses = self.replicas.sum(grads, losses)
        for loss in losses:
            self.on_loss(loss)
        return grads

    def _check(self, outputs: tuple[torch.Tensor, ...]) -> None:
        """The stage returns what pipeline.yaml says: catches stage files edited by hand."""
        for spec, (shape, dtype), tensor in zip(
            self.spec.outputs, self._fixed.outputs, outputs, strict=False
        ):
            if tensor.shape != shape or str(tensor.dtype) != dtype:
                raise VpipeError(
                    f"stage {self.index} returns {spec.name} as {tuple(tensor.shape)} "
                    f"{str(tensor.dtype).removeprefix('torch.')}; pipeline.yaml expects "
                    f"{spec.shape} {spec.dtype}: regenerate with vpipe-gen"
                )
        if len(outputs) != len(self.spec.outputs):
            raise VpipeError(
                f"stage {self.index} returns {len(outputs)} tensors; pipeline.yaml expects "
                f"{len(self.spec.outputs)}: regenerate with vpipe-gen"
            )

    def model_output(self, outputs: tuple[torch.Tensor, ...]) -> Any:
        """The last stage's tensors in the model's own output structure (a tensor, a tuple, a
        dict, a Hugging Face ModelOutput), as loss_fn expects it."""
        leaves = [outputs[k] for k in self._fixed.leaves]
        if self.output_spec.is_leaf():  # one tensor: what tree_unflatten would give back
            return leaves[0]
        return pytree.tree_unflatten(leaves, self.output_spec)

    def _own_inputs(self, batch: Batch) -> list[torch.Tensor]:
        """This stage's inputs from the batch, in pipeline.yaml's order, on its device."""
        by_key = dict(batch.inputs)
        return [by_key[key].to(self.device) for key in self.spec.batch_inputs]

    def _batch(self, i: int) -> Batch:
        return self.model_file.batch(self.pipeline.batch_size, i)

    def final_state(self) -> Weights:
        """The trained weights and buffers (running statistics), by their model names."""
        return {n: t.detach().clone() for n, t in {**self.weights, **self.buffers}.items()}


@dataclass(frozen=True)
class _Fixed:
    """What a stage's actions would otherwise work out again each time from pipeline.yaml: it
    never changes during a run, and on a small stage the per-action lookups and allocations
    cost as much as the compute."""

    needs_batch: bool  # it takes batch inputs, or it is the last stage (the target)
    outputs: tuple[tuple[tuple[int, ...], str], ...]  # each output's shape and str(dtype)
    carries: tuple[bool, ...]  # per output: whether a gradient comes back for it
    leaves: tuple[int, ...]  # last stage: the outputs the model's output is made of, in order
    seed: torch.Tensor | None  # last stage: the loss's gradient (backward only reads it)

    @classmethod
    def of(cls, pipeline: Pipeline, index: int, schedule: str, device: torch.device) -> _Fixed:
        spec = pipeline.stages[index]
        last = index == len(pipeline.stages) - 1
        position = {s.name: k for k, s in enumerate(spec.outputs)}
        scale = 1.0 if schedule == "asp" else 1.0 / pipeline.microbatches
        return cls(
            needs_batch=bool(spec.batch_inputs) or last,
            outputs=tuple((tuple(s.shape), f"torch.{s.dtype}") for s in spec.outputs),
            carries=tuple(carries_gradient(s) for s in spec.outputs),
            leaves=tuple(position[n] for n in pipeline.output_leaves) if last else (),
            seed=torch.tensor(scale, device=device) if last else None,
        )


def _detached(weights: Weights) -> Weights:
    return {n: t.detach() for n, t in weights.items()}


def _trainable(weights: Weights) -> Weights:
    return {n: t.requires_grad_() for n, t in weights.items()}
