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

TIMED_OPS = ("call_module", "call_function", "call_method")
MAX_PASSES = 2000  # a bound for a model of microseconds under `min_time_s`


@dataclass(frozen=True)
class NodeTimes:
    """One node's median forward and backward milliseconds, timed in sequence."""

    forward_ms: float
    backward_ms: float


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
) -> dict[str, NodeTimes]:
    """Median forward and backward milliseconds of every computing node of `gm`, over at least
    `repeats` whole forwards and backwards (after `warmup` untimed ones) on `inputs`, and more
    until the timed ones took `min_time_s` on the clock `now` (seconds; at most MAX_PASSES).
    The backward is seeded with ones for every output that requires grad, as the node-alone
    timing's is."""
    forwards: dict[str, list[float]] = {}
    backwards: dict[str, list[float]] = {}
    for _ in range(warmup):
        _one_pass(gm, inputs, now)
    timed_s, passes = 0.0, 0
    while passes < repeats or (timed_s < min_time_s and passes < MAX_PASSES):
        start = now()
        forward_s, backward_s = _one_pass(gm, inputs, now)
        timed_s += now() - start
        passes += 1
        for n in gm.graph.nodes:
            if n.op in TIMED_OPS:
                forwards.setdefault(n.name, []).append(forward_s.get(n.name, 0.0))
                backwards.setdefault(n.name, []).append(backward_s.get(n.name, 0.0))
    return {
        name: NodeTimes(
            statistics.median(forwards[name]) * 1e3, statistics.median(backwards[name]) * 1e3
        )
        for name in forwards
    }


def _one_pass(
    gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...], now: Callable[[], float]
) -> tuple[dict[str, float], dict[str, float]]:
    """One forward and backward: each node's forward seconds and backward seconds."""
    gm.zero_grad(set_to_none=True)
    run = _ClockedRun(gm, now)
    outputs = [t for t in flat_tensors(run.run(*inputs)) if t.requires_grad]
    backward_s: dict[str, float] = {}
    if outputs:
        torch.autograd.backward(outputs, [torch.ones_like(t) for t in outputs])
        end = now()
        marks = run.marks
        for (start, name), (stop, _) in zip(marks, [*marks[1:], (end, "")], strict=True):
            backward_s[name] = backward_s.get(name, 0.0) + stop - start
    return run.forward_s, backward_s
