"""Measure a captured graph node by node: bytes by watching what autograd saves during one whole
forward; on CUDA, times by re-running each node alone (on a CPU, `profiler.sequence` times them
in whole passes).

Why node by node: a planner needs the cost of every possible stage, and a stage is a set of
nodes. Re-run alone, a node runs on a copy of the exact inputs it saw in the whole forward, with
the same `requires_grad` flags, so its backward does the work it does inside the model. The sum
of node times is compared with one whole-model forward and backward (the profile's honesty
figure).
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import fx
from torch.utils import _pytree as pytree

from vpipe.common.capture import flat_tensors
from vpipe.common.memory import LiveBytes
from vpipe.common.modelfile import Batch, ModelFile

# a bound on the timed runs `min_time_s` asks for: a loss of microseconds stops here
MAX_RUNS = 2000


class Clock:
    """Milliseconds of one call: CUDA events on a GPU; on CPU the process's CPU time when torch
    computes on one thread (as it is when the Clock is made), else wall time (perf_counter).

    Why CPU time: on a shared or virtual machine the wall clock also counts the time the core
    went to others (the hypervisor's steal, other processes' turns), and one thread's CPU time
    does not; on a 2-vCPU guest with 20-50% steal it stayed steady while wall time varied by 2x.
    With several threads the process's CPU time sums them and is no longer a duration: wall.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.kind = "cuda" if self.cuda else "cpu" if torch.get_num_threads() == 1 else "wall"
        self._now = time.process_time if self.kind == "cpu" else time.perf_counter

    def now(self) -> float:
        """Seconds on this clock's host clock (CPU only: a GPU's work runs after the call)."""
        assert not self.cuda, "time CUDA work with events"  # no user input reaches here
        return self._now()

    def time(self, fn: Callable[[], Any]) -> float:
        if not self.cuda:
            start = self._now()
            fn()
            return (self._now() - start) * 1e3
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        end.synchronize()
        return begin.elapsed_time(end)


def storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def storage_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


@dataclass
class Reference:
    """One whole forward, interpreted: every node's value and what autograd saved in it."""

    values: dict[str, Any] = field(default_factory=dict)
    saved: dict[str, list[torch.Tensor]] = field(default_factory=lambda: defaultdict(list))


class _Recorder(fx.Interpreter):
    """Runs the graph keeping every value alive (so no storage address is ever reused)."""

    def __init__(self, gm: fx.GraphModule, reference: Reference) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.reference = reference
        self.current = ""

    def run_node(self, n: fx.Node) -> Any:
        self.current = n.name
        value = super().run_node(n)
        self.reference.values[n.name] = value
        return value


def reference_run(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> Reference:
    """Run the model once, attributing each tensor autograd saves to the node that saved it."""
    reference = Reference()
    recorder = _Recorder(gm, reference)

    def pack(t: torch.Tensor) -> torch.Tensor:
        reference.saved[recorder.current].append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        recorder.run(*inputs)
    return reference


@dataclass(frozen=True)
class SavedBytes:
    """What one node keeps for backward, split so stages can sum it without double counting."""

    own_bytes: int  # storages other than the node's inputs' and its output's
    inputs: tuple[str, ...]  # input nodes whose tensors it keeps
    saves_output: bool


def classify_saved(node: fx.Node, reference: Reference, state_keys: set[int]) -> SavedBytes:
    """Sort the storages a node saved into: its inputs', its own output's, and the rest."""
    input_names = {a.name: None for a in node.all_input_nodes}
    by_input: dict[int, list[str]] = defaultdict(list)  # inputs may share one storage
    for name in input_names:
        for t in flat_tensors(reference.values[name]):
            by_input[storage_key(t)].append(name)
    own_output = {storage_key(t) for t in flat_tensors(reference.values[node.name])}
    seen: set[int] = set()
    own = 0
    kept_inputs: set[str] = set()
    saves_output = False
    for t in reference.saved.get(node.name, ()):
        key = storage_key(t)
        if key in seen or key in state_keys:
            continue
        seen.add(key)
        if key in by_input:
            kept_inputs.update(by_input[key])
        elif key in own_output:
            saves_output = True
        else:
            own += storage_bytes(t)
    ordered = tuple(name for name in input_names if name in kept_inputs)
    return SavedBytes(own_bytes=own, inputs=ordered, saves_output=saves_output)


def _fresh(value: Any) -> Any:
    """A private copy of a recorded value with the same requires_grad, safe for in-place ops."""
    if isinstance(value, torch.Tensor):
        if value.requires_grad:
            # a clone of a leaf, so an in-place op on it is legal, as inside the model
            return value.detach().clone().requires_grad_().clone()
        return value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_fresh(v) for v in value)
    if isinstance(value, dict):
        return {k: _fresh(v) for k, v in value.items()}
    return value


def _node_callable(node: fx.Node, gm: fx.GraphModule) -> Callable[..., Any]:
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))
    if node.op == "call_method":
        return lambda obj, *args, **kwargs: getattr(obj, str(node.target))(*args, **kwargs)
    assert callable(node.target)  # call_function: fx holds the function itself
    return node.target


@dataclass(frozen=True)
class Timing:
    """Median forward and backward time of a callable, and on CUDA its transient peak."""

    forward_ms: float
    backward_ms: float
    workspace_bytes: int | None  # CUDA only: peak above what was allocated before, less outputs


def time_forward_backward(
    prepare: Callable[[], Callable[[], Any]],
    clock: Clock,
    warmup: int,
    repeats: int,
    min_time_s: float = 0.0,
) -> Timing:
    """Time `prepare()()` and the backward of its outputs: untimed at least `warmup` times and
    until those runs took `min_time_s`, then at least `repeats` times and until the timed runs
    took `min_time_s` (each phase at most MAX_RUNS runs). The warm-up by time: in a fresh
    process the first 0.1 s of `widehead`'s loss ran at 11.9 ms a call, the next at 0.8.

    `prepare` makes fresh inputs outside the timed region and returns the call to time. The
    backward is seeded with ones for every output that requires grad.
    """
    rep, warm_ms = 0, 0.0
    while rep < warmup or (warm_ms / 1e3 < min_time_s and rep < MAX_RUNS):
        warm_ms += sum(_timed_pass(prepare(), clock)[:2])
        rep += 1
    forwards: list[float] = []
    backwards: list[float] = []
    workspace = 0
    while len(forwards) < repeats or (
        (sum(forwards) + sum(backwards)) / 1e3 < min_time_s and len(forwards) < MAX_RUNS
    ):
        forward, backward, peak = _timed_pass(prepare(), clock)
        forwards.append(forward)
        backwards.append(backward)
        workspace = max(workspace, peak)
    return Timing(
        statistics.median(forwards), statistics.median(backwards), workspace if clock.cuda else None
    )


def _timed_pass(call: Callable[[], Any], clock: Clock) -> tuple[float, float, int]:
    """Milliseconds of `call()` and of its outputs' backward (seeded with ones), and on CUDA
    the peak above what was allocated before, less its outputs (0 on a CPU)."""
    if clock.cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    result: list[Any] = []
    forward = clock.time(lambda: result.append(call()))
    outputs = [t for t in flat_tensors(result[0]) if t.requires_grad]
    grads = [torch.ones_like(t) for t in outputs]
    backward = clock.time(lambda: torch.autograd.backward(outputs, grads)) if outputs else 0.0
    if not clock.cuda:
        return forward, backward, 0
    produced = sum(t.numel() * t.element_size() for t in flat_tensors(result[0]))
    return forward, backward, torch.cuda.max_memory_allocated() - before - produced


def time_node(
    node: fx.Node, gm: fx.GraphModule, reference: Reference, clock: Clock, warmup: int, repeats: int
) -> Timing:
    """Median forward and backward time of one node, re-run alone on copies of its inputs."""
    if node.op not in ("call_module", "call_function", "call_method"):
        return Timing(0.0, 0.0, 0 if clock.cuda else None)
    call = _node_callable(node, gm)
    module = gm.get_submodule(str(node.target)) if node.op == "call_module" else None

    def prepare() -> Callable[[], Any]:
        args = fx.node.map_arg(node.args, lambda n: _fresh(reference.values[n.name]))
        kwargs = fx.node.map_arg(node.kwargs, lambda n: _fresh(reference.values[n.name]))
        if module is not None:
            module.zero_grad(set_to_none=True)
        return lambda: call(*args, **kwargs)

    return time_forward_backward(prepare, clock, warmup, repeats)


def time_whole_model(
    model: torch.nn.Module,
    batch: Batch,
    clock: Clock,
    warmup: int,
    repeats: int,
) -> tuple[Timing, int | None]:
    """One full forward and backward, and on CUDA the peak bytes allocated during the last one."""

    def prepare() -> Callable[[], Any]:
        model.zero_grad(set_to_none=True)
        return lambda: batch.call(model)

    timing = time_forward_backward(prepare, clock, warmup, repeats)
    return timing, torch.cuda.max_memory_allocated() if clock.cuda else None


def time_batch(
    model_file: ModelFile, batch_size: int, clock: Clock, warmup: int, repeats: int
) -> float:
    """Median milliseconds of making one micro-batch (a new step each time, as in training)."""
    steps = range(warmup + repeats)
    times = [clock.time(partial(model_file.batch, batch_size, step)) for step in steps]
    return statistics.median(times[warmup:])


def time_update(
    params: list[torch.Tensor], optimizer: str, clock: Clock, warmup: int, repeats: int
) -> float:
    """Median milliseconds of one optimizer step on `params`, made the way the runtime makes it
    on a stage with micro-batches in flight (into new tensors: the costlier of its two ways),
    after its check that every gradient is finite (`all_finite`, which `runtime.nonfinite`
    calls). Under asp every micro-batch ends in one; a step of 1f1b or gpipe, in one per M.
    Timed alone, on CUDA; on a CPU the passes in sequence time it (profiler/sequence.py)."""
    from vpipe.common.optim import Updater, all_finite

    if not params:
        return 0.0
    weights = {str(i): p.detach().clone() for i, p in enumerate(params)}
    grads = {name: torch.ones_like(w) for name, w in weights.items()}
    updater = Updater(optimizer, lr=1e-3)
    times = []
    for rep in range(warmup + 1 + repeats):  # the first step creates the optimizer's state
        elapsed = clock.time(
            lambda: all_finite(grads) and updater.step(weights, grads, in_place=False)
        )
        if rep > warmup:
            times.append(elapsed)
    return statistics.median(times)


def time_accumulate(params: list[torch.Tensor], clock: Clock, warmup: int, repeats: int) -> float:
    """Median milliseconds of adding one micro-batch's gradients of `params` into a running
    sum in place, as the runtime does after each backward under 1f1b and gpipe (the step's
    first micro-batch copies them instead, which costs about as much). Timed alone, on CUDA;
    on a CPU the passes in sequence time it (profiler/sequence.py)."""
    if not params:
        return 0.0
    total = [torch.zeros_like(p) for p in params]
    grads = [torch.ones_like(p) for p in params]
    times = []
    for rep in range(warmup + repeats):
        elapsed = clock.time(lambda: [t.add_(g) for t, g in zip(total, grads, strict=True)])
        if rep >= warmup:
            times.append(elapsed)
    return statistics.median(times)


@dataclass(frozen=True)
class LossCost:
    """The loss on one micro-batch's outputs: its time, what it saves for backward (its own
    tensors, e.g. log-softmax's output), which outputs it keeps, and the peak its backward adds
    (the gradients it makes, as large as the outputs)."""

    timing: Timing
    saved_bytes: int
    kept_outputs: tuple[int, ...]  # positions in the flat list of the model's output tensors
    backward_peak_bytes: int


def measure_loss(
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
    output: Any,
    target: torch.Tensor,
    clock: Clock,
    warmup: int,
    repeats: int,
    min_time_s: float = 0.0,
    timing: Timing | None = None,
) -> LossCost:
    """Weigh `loss_fn(output, target)` on copies of the model's output (as the last stage
    receives it: leaves that require grad) and, unless `timing` says what it takes (a CPU's
    passes time it in place, profiler/sequence.py), time it alone, timed runs until they took
    `min_time_s`: five runs of `widehead`'s loss (a softmax over 4 MiB of logits) put its
    median anywhere between 0.74 and 11.5 ms."""

    def fresh() -> Any:
        return _fresh_leaves(output)

    if timing is None:
        timing = time_forward_backward(
            lambda: _call(loss_fn, fresh(), target), clock, warmup, repeats, min_time_s
        )
    leaves = fresh()
    outputs = {storage_key(t): i for i, t in enumerate(flat_tensors(leaves))}
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_fn(leaves, target)
    sizes = {storage_key(t): storage_bytes(t) for t in saved}
    own = sum(size for key, size in sizes.items() if key not in outputs)
    kept = tuple(sorted({outputs[key] for key in sizes if key in outputs}))
    if clock.cuda:
        saved.clear()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        loss.backward()
        added = torch.cuda.max_memory_allocated() - before
    else:  # net of what the backward frees: the saved tensors are counted from the start
        meter = LiveBytes(saved)
        start = meter.current
        saved.clear()
        with meter:
            loss.backward()
        added = meter.peak - start
    return LossCost(timing, own, kept, added)


def _call(loss_fn: Callable[[Any, torch.Tensor], torch.Tensor], output: Any, target):
    return lambda: loss_fn(output, target)


def _fresh_leaves(value: Any) -> Any:
    """Floating-point tensors as new leaves that require grad, the rest as they are, in the
    same structure (a ModelOutput stays one)."""

    def fresh(leaf: Any) -> Any:
        if not isinstance(leaf, torch.Tensor):
            return leaf
        copy = leaf.detach().clone()
        return copy.requires_grad_() if copy.is_floating_point() else copy

    return pytree.tree_map(fresh, value)


class _BackwardLog(LiveBytes):
    """LiveBytes that also logs each storage made or freed, with the node whose backward was
    running (the last whose output's gradient completed): `backward_peaks` replays the log."""

    def __init__(self) -> None:
        super().__init__()
        self.node = ""
        self.events: list[tuple[str, int, int]] = []  # (node, storage address, +/- bytes)

    def enter(self, node: str) -> None:
        self.node = node
        self.events.append((node, 0, 0))

    def _count(self, tensor: torch.Tensor) -> None:
        address = tensor.untyped_storage().data_ptr()
        new = address not in self.bytes
        super()._count(tensor)
        if new and address in self.bytes:
            self.events.append((self.node, address, self.bytes[address]))

    def _release(self, address: int) -> None:
        size = self.bytes[address]
        super()._release(address)
        if address not in self.bytes:
            self.events.append((self.node, address, -size))


def backward_peaks(gm: fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> dict[str, int]:
    """Per node, the most bytes one whole backward of the model holds while that node's
    backward runs, of tensors the backward made: gradients still to be used (a residual's
    while its branch runs), the node's temporaries. Parameter gradients (what is left at the
    end) are not included: the planner counts them whole. Why whole-model rather than node by
    node: what is pending beside a node's backward depends on the graph around it."""
    log = _BackwardLog()

    class Hooked(fx.Interpreter):
        def run_node(self, n: fx.Node) -> Any:
            value = super().run_node(n)
            for t in flat_tensors(value) if n.op != "output" else ():
                if t.requires_grad:
                    t.register_hook(lambda grad, name=n.name: log.enter(name))
            return value

    outputs = [t for t in flat_tensors(Hooked(gm).run(*inputs)) if t.requires_grad]
    seeds = [torch.ones_like(t) for t in outputs]
    wrt = [p for p in gm.parameters() if p.requires_grad] + [t for t in inputs if t.requires_grad]
    if outputs and wrt:
        with log:  # as the runtime asks: every gradient at once, none accumulated into .grad
            found = torch.autograd.grad(outputs, wrt, seeds, allow_unused=True)
    survivors = set(log.bytes)  # the gradients asked for: skip their last allocation
    events = list(log.events)
    if outputs and wrt:
        del found
    last_made = {address: i for i, (_, address, size) in enumerate(events) if size > 0}
    skipped = {last_made[address] for address in survivors if address in last_made}
    peaks: dict[str, int] = {}
    current = 0
    for i, (node, _, size) in enumerate(events):
        if i not in skipped:
            current += size
        if node:
            peaks[node] = max(peaks.get(node, 0), current)
    return peaks
