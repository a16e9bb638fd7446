"""What a stage costs, in time and bytes, under each schedule: the planner's one cost model.

Every solver, the brute-force oracle, the report and (later) the runtime's memory checks use
these functions; nothing else re-derives the formulas. docs/planner.md states the model:

- time per micro-batch: max(compute, comm_in, comm_out), compute = fwd + bwd of every node plus
  fwd again of every recomputed node plus the CPU work of the stage's transfers (each end of a
  cut pays the `link_ms` of every tensor crossing it: on a CPU, gloo copies on the cores that
  compute), comm = 2 x crossing bytes / bandwidth;
- memory: weights x versions + grads (twice under 1f1b and gpipe: the step's running sum and
  the micro-batch's own) + optimizer state + in-flight x (kept tensors + received inputs) + the
  links' buffers + the transient: the largest checkpoint segment rebuilt, plus the most the
  backward itself holds at once (gradients still to be used and a node's temporaries:
  `backward_bytes`, a max over the stage's nodes).

A parameter several nodes use (tied weights) is charged to its first user's node; every other
stage that uses it holds a copy, counted there as a weight of its own (`tied_copy_bytes`).

The tensors a stage sends count as kept: autograd holds them as its backward's roots. The links
(runtime/links.py) post each receive one micro-batch ahead (received bytes), hold the gradient
being received beside the next one posted (2 x sent), and keep the tensors of the last two
sends until they are waited on: two activation sends on the first stage, two gradient sends on
the last; between, two activation sends while the first forwards run back to back and one of
each later (the larger pair counts). A gradient send holds the received bytes; an activation
send holds only what it had to copy to lay out densely (`copied_bytes`): the rest is kept.

A *checkpoint segment* is a maximal run of recomputed nodes in the stage's (topological) order.
A tensor produced in the stage is kept per in-flight micro-batch when a non-recomputed node
keeps it for backward, or when a segment reads it from outside itself (checkpoint keeps its
inputs). Tensors from earlier stages are kept as received.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from vpipe.planner.graph import PlanGraph
from vpipe.planner.schema import MemoryBreakdown, PlanSettings, StagePrediction


@dataclass(frozen=True)
class ScheduleShape:
    """How a schedule multiplies a stage's per-micro-batch figures."""

    versions: int  # weight versions alive (weight stashing keeps one per in-flight mini-batch)
    in_flight: int  # micro-batches whose activations are alive at once


def link_buffer_bytes(
    received: Any,
    sent: Any,
    copied: Any,
    first: bool,
    last: bool,
    larger: Callable[[Any, Any], Any] = max,
) -> Any:
    """What a stage's links hold beside the micro-batches in flight (see the module docstring):
    `copied` is the part of `sent` a send copies. `larger` is max for numbers; the DP passes
    numpy's elementwise maximum, the ILP a variable bounded below by both."""
    if first and last:
        return 0 * received
    if first:
        pending = 2 * copied
    elif last:
        pending = 2 * received
    else:  # two forwards in a row before the first backward: two activation sends at worst
        pending = copied + larger(copied, received)
    return received + 2 * sent + pending


def gradient_copies(settings: PlanSettings) -> int:
    """Gradient-sized tensors alive at the peak: under 1f1b and gpipe the step's running sum
    beside the micro-batch's own gradients (one when a step is one micro-batch)."""
    return 1 if settings.schedule == "asp" or settings.microbatches == 1 else 2


def schedule_shape(settings: PlanSettings, stage: int) -> ScheduleShape:
    ahead = settings.gpus - stage  # stage s of S runs S - s forwards before its first backward
    if settings.schedule == "asp":
        return ScheduleShape(versions=ahead, in_flight=ahead)
    if settings.schedule == "1f1b":
        return ScheduleShape(1, min(ahead, settings.microbatches))
    return ScheduleShape(1, settings.microbatches)  # gpipe: all forwards first


def crossing_bytes(graph: PlanGraph, prefix: Collection[int]) -> int:
    """Bytes of the tensors produced in `prefix` and needed after it (the model's outputs are
    needed by the loss on the last stage)."""
    return sum(graph.out_bytes[u] for u in _crossing(graph, prefix))


def crossing_link_ms(graph: PlanGraph, prefix: Collection[int]) -> float:
    """CPU milliseconds each end of the cut after `prefix` spends on the tensors crossing it."""
    return sum(graph.link_ms[u] for u in _crossing(graph, prefix))


def _crossing(graph: PlanGraph, prefix: Collection[int]) -> list[int]:
    if len(prefix) == graph.size:
        return []
    inside = set(prefix)
    return [u for u in inside if u in graph.outputs or any(w not in inside for w in graph.succs[u])]


def sent_nodes(graph: PlanGraph, before: Collection[int], stage: Sequence[int]) -> tuple[int, ...]:
    """The nodes of `stage` whose outputs a later stage reads (or the loss there)."""
    done = set(before) | set(stage)
    if len(done) == graph.size:
        return ()
    return tuple(
        u for u in stage if u in graph.outputs or any(w not in done for w in graph.succs[u])
    )


def kept_bytes(
    graph: PlanGraph, stage: Sequence[int], recompute: Collection[int], sent: Collection[int] = ()
) -> tuple[int, int]:
    """(bytes kept per micro-batch for backward, transient of the largest segment) of a stage
    that sends the outputs of `sent` (kept: the backward's roots).

    Received inputs are not included: they depend on the cut before the stage.
    """
    members = set(stage)
    recomputed = set(recompute)
    segment: dict[int, int] = {}  # node -> the id of its checkpoint segment
    segment_bytes: dict[int, int] = {}
    current = -1
    for position, n in enumerate(sorted(stage)):
        if n in recomputed:
            if current < 0:
                current = position
            segment[n] = current
            segment_bytes[current] = segment_bytes.get(current, 0) + graph.transient_bytes(n)
        else:
            current = -1
    held: set[int] = {graph.owner[u] for u in sent}
    internal = 0
    for n in stage:
        if n in recomputed:
            # a segment keeps what it reads from outside itself
            held.update(t for t in graph.reads[n] if segment.get(t, -2) != segment[n])
        else:
            internal += graph.internal_bytes[n]
            held.update(graph.keeps[n])
    kept = internal + sum(graph.out_bytes[t] for t in held if t in members)
    return kept, max(segment_bytes.values(), default=0)


def backward_peak_bytes(graph: PlanGraph, stage: Sequence[int]) -> int:
    """The most a stage's backward holds at once beyond what the forward kept. Nodes' peaks
    leave out the gradient of the stage's outputs (received: a link buffer); on the stage that
    runs the loss, the loss's backward makes it, and it lasts through the nodes' backwards."""
    if graph.loss is None or graph.loss not in stage:
        return max((graph.backward_bytes[n] for n in stage), default=0)
    made = output_gradient_bytes(graph)
    nodes = (graph.backward_bytes[n] + made for n in stage if n != graph.loss)
    return max(graph.backward_bytes[graph.loss], *nodes)


def output_gradient_bytes(graph: PlanGraph) -> int:
    """The gradient the loss's backward makes for the model's outputs: as large as they are."""
    return sum(graph.out_bytes[p] for p in graph.preds[graph.loss]) if graph.loss is not None else 0


def recompute_free_bytes(
    graph: PlanGraph,
    settings: PlanSettings,
    index: int,
    before: Collection[int],
    stage: Sequence[int],
) -> int:
    """A stage's bytes that no recompute choice changes: all but in-flight x kept and the
    rebuilt segment, which `recompute.cheapest_recompute` fits into what is left."""
    plain = evaluate_stage(graph, settings, index, before, stage, ())
    kept, _ = kept_bytes(graph, stage, (), sent_nodes(graph, before, stage))
    return plain.memory.total - schedule_shape(settings, index).in_flight * kept


def tied_copy_bytes(graph: PlanGraph, stage: Collection[int]) -> tuple[int, int]:
    """(parameter, trainable) bytes of the tied copies `stage` holds: of each parameter that a
    node of the stage uses while its owner (the first user, which the profile charges) runs on
    another stage. A copy is a weight of the stage like its own: it has the stage's versions,
    a gradient and optimizer state (runtime/tied.py updates every copy)."""
    members = set(stage)
    copies = [t for t in graph.ties if t.users[0] not in members and members.intersection(t.users)]
    return sum(t.param_bytes for t in copies), sum(t.trainable_bytes for t in copies)


def evaluate_stage(
    graph: PlanGraph,
    settings: PlanSettings,
    index: int,
    before: Collection[int],
    stage: Sequence[int],
    recompute: Collection[int],
) -> StagePrediction:
    """Predicted time and memory of stage `index`, whose earlier stages hold `before`."""
    shape = schedule_shape(settings, index)
    recompute_ms = sum(graph.fwd_ms[n] for n in recompute)
    transfer_ms = crossing_link_ms(graph, before) + crossing_link_ms(graph, [*before, *stage])
    compute = sum(graph.compute_ms(n) for n in stage) + recompute_ms + transfer_ms
    received = crossing_bytes(graph, before)
    sent = crossing_bytes(graph, set(before) | set(stage))
    per_byte_ms = 2 / (settings.bandwidth_gbps * 1e6)  # activation forward + gradient back
    comm_in, comm_out = received * per_byte_ms, sent * per_byte_ms
    sending = sent_nodes(graph, before, stage)
    kept, segment = kept_bytes(graph, stage, recompute, sending)
    copied = sum(graph.copied_bytes[u] for u in sending)
    first, last = index == 0, index == settings.gpus - 1
    tied_params, tied_trainable = tied_copy_bytes(graph, stage)
    trainable = sum(graph.trainable_bytes[n] for n in stage) + tied_trainable
    memory = MemoryBreakdown(
        params=sum(graph.param_bytes[n] for n in stage) + tied_params,
        stash=trainable * (shape.versions - 1),
        grads=trainable * gradient_copies(settings),
        optimizer=trainable * graph.optimizer_factor,
        activations=shape.in_flight * (kept + received),
        buffers=int(link_buffer_bytes(received, sent, copied, first, last)),
        transient=segment + backward_peak_bytes(graph, stage),
    )
    return StagePrediction(
        compute_ms=compute,
        recompute_ms=recompute_ms,
        comm_in_ms=comm_in,
        comm_out_ms=comm_out,
        time_ms=max(compute, comm_in, comm_out),
        memory=memory,
        transfer_ms=transfer_ms,
    )
