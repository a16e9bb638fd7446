"""Time every node where it runs: inside whole forwards and backwards of the graph, in order.

Why not each node alone: re-run alone on copies of its inputs, a node finds its weights and
inputs in the cache, left there by the copy and by its own previous runs; inside the model the
nodes before it have pushed them out. On a 2-core CPU that made the node sums of a stage's
forward 1.2-1.7x shorter than the same stage's forward in a training loop, unevenly across the
model (so no single factor corrects it). Timed in order, a node pays what it pays in a stage.

Forward: each node's call, clocked by the interpreter that runs the graph. Backward: a hook on
each node's output tensors fires when their gradient is complete, which is when the node's own
backward can start; the time from one such moment to the next is the backward of the node that
started, and the last one runs to the end of the backward. The parts add up to the whole
backward by construction; on a branchy graph the engine may interleave two branches' nodes, and
the split between them is then approximate.

Update and accumulation: after each pass's backward, on the gradients that backward made, and
after the same work on one 1-element tensor first (`CALL`: the first call after a backward
costs about 0.2 ms more, whatever it steps, and every stage pays it), each node's optimizer step
the runtime's way (its check that they are finite, then the step into new
tensors), or each node's add into a running sum (1f1b, gpipe). Timed alone in a loop, the step
found its weights and gradients in the cache; after a backward it does not, as in a stage
(`widehead`'s 8 MiB embedding: 1.75 ms alone, 3.43 ms in sequence; its stage's whole update
3.8 ms in the running executor, where the profile had said 2.16).

The batch and the loss: given the model file's `Step`, each pass makes its micro-batch (a new
step each pass, as a stage does) and seeds the backward from the loss of the graph's output,
both clocked where a stage runs them. Timed alone in a loop they found the output and the
generator's state in the cache: `widehead`'s loss (a softmax over 4 MiB of logits) 0.69 ms
forward there, 0.99 ms in its stage; the batch 0.009 ms there, 0.08 ms in each stage that
makes it.

The mean over the passes, not the median: a pipeline's throughput is its stages' mean action
time, slow ones included, and a machine whose speed swings in spells of seconds (a shared VM)
puts some passes in a spell. Over passes taken for 2 s, the median snapped to the fast state:
7 of the 8 bundled 2-stage pipelines ran at 0.86-0.95 of their prediction. The mean of the
same passes put 6 of them at 0.95-1.00 (docs/benchmarks.md).

CPU only: a GPU runs a node's kernels after the call returns, so a host clock around the call
would time the launch. On CUDA the profiler times each node alone with CUDA events
(`measure.time_node`).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from vpipe.common.capture import flat_tensors
from vpipe.common.optim import Updater, all_finite
from vpipe.profiler.schema import LOSS_NODE

TIMED_OPS = ("call_module", "call_function", "call_method")
MAX_PASSES = 2000  # a bound for a model of microseconds under `min_time_s`
WHOLE = ""  # the update of every node's parameters in one call, as a key beside the nodes'
CALL = "(call)"  # the first update or accumulation after a backward, on one 1-element tensor
BATCH = "(batch)"  # making the pass's micro-batch, as a key beside the nodes' (its forward)
FORWARD, BACKWARD, UPDATE, ACCUMULATE = range(4)  # the places of a node's samples of each


@dataclass(frozen=True)
class NodeTimes:
    """One node's mean forward, backward, update and accumulate milliseconds, timed in
    sequence."""

    forward_ms: float
    backward_ms: float
    update_ms: float = 0.0  # its trainable parameters' step (none: 0)
    accumulate_ms: float = 0.0  # adding their gradients into a step's running sum


@dataclass(frozen=True)
class Step:
    """What a stage does around the graph each micro-batch, for the passes to time in place:
    make the micro-batch of a step (the graph's inputs and the target) and take the loss of
    the graph's output."""

    batch: Callable[[int], tuple[tuple[torch.Tensor, ...], torch.Tensor]]
    loss: Callable[[Any, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SequenceTimes:
    """Everything the passes timed: per computing node, and with a `Step` the loss (as one
    more node) and the making of a micro-batch; and what the first update and the first
    accumulation after a backward cost beyond their tensors' work (every stage pays each once,
    whichever weights it holds)."""

    nodes: dict[str, NodeTimes]
    loss: NodeTimes | None = None
    batch_ms: float | None = None
    update_call_ms: float = 0.0
    accumulate_call_ms: float = 0.0


@dataclass(frozen=True)
class _Update:
    """How a pass steps one node's trainable parameters: the runtime's check and step."""

    params: tuple[torch.Tensor, ...]
    updater: Updater

    def __call__(self) -> None:
        grads = {str(i): p.grad for i, p in enumerate(self.params) if p.grad is not None}
        weights = {name: self.params[int(name)].detach() for name in grads}
        if all_finite(grads):
            self.updater.step(weights, grads, in_place=False)


@dataclass(frozen=True)
class _Accumulate:
    """How a pass adds one node's gradients into a running sum, as a stage of 1f1b or gpipe
    does after each backward (`runtime.executor`)."""

    params: tuple[torch.Tensor, ...]
    totals: tuple[torch.Tensor, ...]

    @classmethod
    def of(cls, params: tuple[torch.Tensor, ...]) -> _Accumulate:
        return cls(params, tuple(torch.zeros_like(p) for p in params))

    def __call__(self) -> None:
        for total, param in zip(self.totals, self.params, strict=True):
            if param.grad is not None:
                total.add_(param.grad)


class _ClockedRun(fx.Interpreter):
    """One forward of the graph, clocking each node and hooking its outputs' gradients."""

    def __init__(self, gm: fx.GraphModule, now: Callable[[], float]) -> None:
        super().__init__(gm)
        self.now = now
        # (time, node name) when a node's output gradients are complete, in the backward
        self.marks: list[tuple[float, str]] = []
        self.forward_s: dict[str, float] = {}
        self.current = ""  # the node being run

    def run_node(self, n: fx.Node) -> Any:
        self.current = n.name
        value = super().run_node(n)
        if n.op in TIMED_OPS:
            for tensor in flat_tensors(value):
                if tensor.requires_grad:
                    tensor.register_hook(self._marker(n.name))
        return value

    # the clock runs around the call only, not the interpreter's own work on the node
    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        return self._clocked(super().call_module, target, args, kwargs)

    def call_function(self, target: Any, args: Any, kwargs: Any) -> Any:
        return self._clocked(super().call_function, target, args, kwargs)

    def call_method(self, target: Any, args: Any, kwargs: Any) -> Any:
        return self._clocked(super().call_method, target, args, kwargs)

    def _clocked(self, call: Callable[..., Any], target: Any, args: Any, kwargs: Any) -> Any:
        start = self.now()
        value = call(target, args, kwargs)
        self.forward_s[self.current] = self.now() - start
        return value

    def _marker(self, name: str) -> Callable[[torch.Tensor], None]:
        """A hook that notes when `name`'s output gradient is complete. It holds the list and
        the clock, never the interpreter: autograd keeps a hook with the graph, and the
        interpreter keeps the pass's output, which keeps the graph; that cycle runs through
        autograd's C++ nodes, where Python's collector cannot see it, so every pass's output
        and graph leaked. Each next pass's backward then faulted in fresh pages (`widehead`:
        4 MiB and 1,090 page faults a pass, its last node's backward charged 1.7 ms against
        0.1 ms alone)."""
        marks, now = self.marks, self.now

        def mark(grad: torch.Tensor) -> None:
            marks.append((now(), name))

        return mark


def time_in_sequence(
    gm: fx.GraphModule,
    inputs: tuple[torch.Tensor, ...],
    now: Callable[[], float],
    warmup: int,
    repeats: int,
    min_time_s: float = 0.0,
    trainable: dict[str, list[torch.Tensor]] | None = None,
    optimizer: str = "sgd",
    step: Step | None = None,
) -> SequenceTimes:
    """Mean forward, backward, update and accumulate milliseconds of every computing node of
    `gm`, over whole passes on `inputs` (after `warmup` untimed ones): at least `repeats` of
    each kind below, and more until the timed ones took `min_time_s` on the clock `now`
    (seconds; at most MAX_PASSES). Without a `step` the backward is seeded with ones for every
    output that requires grad, as the node-alone timing's is; with one, each pass makes its own
    micro-batch and runs the backward from its loss, and both are timed too. `trainable`: per
    node, the parameters its update steps with `optimizer` (the weights stay as they are: each
    step goes into new tensors, as a stashing stage's does) and whose gradients it
    accumulates.

    After its backward a pass times one of: each node's update; one update of every node's
    parameters (a stage updates all its weights in one call, so each node's update leaves out
    what a call costs whatever it steps, `_call_overhead_ms`); each node's accumulation. Each
    follows a backward directly, as in a stage."""
    params = {name: tuple(ps) for name, ps in (trainable or {}).items() if ps}
    per_node = {name: _Update(ps, Updater(optimizer, lr=1e-3)) for name, ps in params.items()}
    everything = tuple(p for ps in params.values() for p in ps)
    # per pass, the work after its backward and which of a node's times it gives; each starts
    # with the same work on one 1-element tensor (CALL), which takes the first call's cost
    turns: list[tuple[dict[str, Callable[[], None]], int]] = []
    if params:
        one = _one_element()
        first = {CALL: _Update(one, Updater(optimizer, lr=1e-3))}
        turns.append(({**first, **per_node}, UPDATE))
        if len(per_node) > 1:
            whole_update = _Update(everything, Updater(optimizer, lr=1e-3))
            turns.append(({**first, WHOLE: whole_update}, UPDATE))
        accumulate = {name: _Accumulate.of(ps) for name, ps in params.items()}
        turns.append(({CALL: _Accumulate.of(one), **accumulate}, ACCUMULATE))
    else:
        turns.append(({}, UPDATE))
    passes = 0
    for after, _ in turns * warmup:  # the first update also makes the optimizer's state
        _one_pass(gm, _Inputs.made(step, passes, inputs, now), now, after)
        passes += 1
    samples: dict[str, list[list[float]]] = {}  # per node: forward, backward, update, accumulate
    timed_s, timed = 0.0, 0
    least = repeats * len(turns)
    names = [n.name for n in gm.graph.nodes if n.op in TIMED_OPS] + list(params)
    names += [LOSS_NODE, BATCH] if step else []
    while timed < least or (timed_s < min_time_s and timed < MAX_PASSES):
        after, part = turns[timed % len(turns)]
        start = now()
        made = _Inputs.made(step, passes + timed, inputs, now)
        forward_s, backward_s, after_s = _one_pass(gm, made, now, after)
        timed_s += now() - start
        timed += 1
        for name in names:
            node = samples.setdefault(name, [[], [], [], []])
            node[FORWARD].append(forward_s.get(name, 0.0))
            node[BACKWARD].append(backward_s.get(name, 0.0))
        for name, seconds in after_s.items():
            samples.setdefault(name, [[], [], [], []])[part].append(seconds)
    ms = {
        name: [statistics.mean(part) * 1e3 if part else 0.0 for part in parts]
        for name, parts in samples.items()
    }
    whole = ms.pop(WHOLE, None)
    loss, batch = ms.pop(LOSS_NODE, None), ms.pop(BATCH, None)
    call = ms.pop(CALL, None)
    overhead = _call_overhead_ms(
        [ms[name][UPDATE] for name in per_node], None if whole is None else whole[UPDATE]
    )
    return SequenceTimes(
        nodes={
            name: NodeTimes(
                forward, backward, max(0.0, update - overhead) if update else 0.0, summed
            )
            for name, (forward, backward, update, summed) in ms.items()
        },
        loss=None if loss is None else NodeTimes(loss[FORWARD], loss[BACKWARD]),
        batch_ms=None if batch is None else batch[FORWARD],
        update_call_ms=0.0 if call is None else call[UPDATE],
        accumulate_call_ms=0.0 if call is None else call[ACCUMULATE],
    )


def _one_element() -> tuple[torch.Tensor, ...]:
    """A weight of one element with a gradient: updating it first after a backward times what
    the first call costs whatever it steps. After each backward of ResNet in one process that
    call took 0.25 ms, and the first node's update after it 0.05 (0.26 without it)."""
    weight = torch.zeros(1, requires_grad=True)
    weight.grad = torch.zeros(1)
    return (weight,)


def _call_overhead_ms(per_node_ms: list[float], whole_ms: float | None) -> float:
    """What one update call costs beyond its parameters' work: the n separate calls' sum less
    the one call over all of them, per call saved (0 with one node, or none to compare)."""
    if whole_ms is None or len(per_node_ms) < 2:
        return 0.0
    return max(0.0, (sum(per_node_ms) - whole_ms) / (len(per_node_ms) - 1))


@dataclass(frozen=True)
class _Inputs:
    """One pass's inputs: the graph's, and with a `Step` the loss of its output on the pass's
    own target and the seconds its micro-batch took to make."""

    graph: tuple[torch.Tensor, ...]
    loss: Callable[[Any], torch.Tensor] | None = None
    batch_s: float = 0.0

    @classmethod
    def made(
        cls,
        step: Step | None,
        index: int,
        inputs: tuple[torch.Tensor, ...],
        now: Callable[[], float],
    ) -> _Inputs:
        """Pass `index`'s: `inputs` without a step, else its micro-batch of step `index`."""
        if step is None:
            return cls(inputs)
        start = now()
        graph, target = step.batch(index)
        batch_s = now() - start
        return cls(graph, lambda output: step.loss(output, target), batch_s)


def _one_pass(
    gm: fx.GraphModule,
    inputs: _Inputs,
    now: Callable[[], float],
    after: dict[str, Callable[[], None]],
) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """One forward, backward and, on the gradients it made, the work `after` it: per node,
    seconds of each (with a loss, it and the batch too, as LOSS_NODE and BATCH)."""
    gm.zero_grad(set_to_none=True)
    run = _ClockedRun(gm, now)
    output = run.run(*inputs.graph)
    forward_s, backward_s, after_s = run.forward_s, {}, {}
    if inputs.loss is None:
        roots = [t for t in flat_tensors(output) if t.requires_grad]
        seeds: list[torch.Tensor] | None = [torch.ones_like(t) for t in roots]
    else:
        forward_s[BATCH] = inputs.batch_s
        start = now()
        loss = inputs.loss(output)
        forward_s[LOSS_NODE] = now() - start
        roots, seeds = ([loss] if loss.requires_grad else []), None
    if roots:
        begin = now()
        torch.autograd.backward(roots, seeds)
        end = now()
        marks = run.marks
        if inputs.loss is not None:  # the loss's backward runs until the first output's is due
            backward_s[LOSS_NODE] = (marks[0][0] if marks else end) - begin
        for (start, name), (stop, _) in zip(marks, [*marks[1:], (end, "")], strict=True):
            backward_s[name] = backward_s.get(name, 0.0) + stop - start
        for name, work in after.items():
            start = now()
            work()
            after_s[name] = now() - start
    return forward_s, backward_s, after_s
