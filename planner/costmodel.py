"""What a stage costs, in time and bytes, under each schedule: the planner's one cost model.

Each term is defined once here. The solvers compute a stage's sums their own way (sets here, numpy
tables in dp.py, constraints in ilp.py, cut vectors in cutsearch.py) and combine them with these
functions: `stage_compute_ms`, `stage_time_ms` (with `comm_ms`) and `stage_memory`.
tests/planner/test_agreement.py checks on random graphs that every solver's figures for every
stage equal `evaluate_stage`'s. docs/planner.md states the model:

- time per micro-batch: max(compute, comm_in, comm_out), compute = fwd + bwd of every node plus
  fwd again of every recomputed node plus the CPU work of the stage's transfers (each end of a
  cut pays the `link_ms` of every tensor crossing it: on a CPU, gloo copies on the cores that
  compute) plus the update's and accumulation's call cost every stage pays (`call_ms`, charged
  half at each of the stage's two boundaries: `boundary_ms`), comm = 2 x crossing bytes /
  bandwidth;
- memory: weights x versions + grads x copies + optimizer state + in-flight x (kept tensors +
  received inputs) + the links' buffers + the transient: the largest checkpoint segment
  rebuilt, plus the most the backward itself holds at once (gradients still to be used and a
  node's temporaries: `backward_bytes`, a max over the stage's nodes). Versions and in-flight
  come from common/schedules.py, gradient copies and the links' depths from
  common/buffering.py: the runtime runs by the same definitions.

A parameter several nodes use (tied weights) is charged to its first user's node; every other
stage that uses it holds a copy, counted there as a weight of its own (`tied_copy_bytes`).

The tensors a stage sends count as kept: autograd holds them as its backward's roots. The links
(runtime/links.py) post each receive RECEIVES_AHEAD micro-batch ahead (received bytes), hold the
gradient being received beside the ones posted (sent bytes each), and keep the tensors of the
last SENDS_AHEAD sends until they are waited on: activation sends on the first stage, gradient
sends on the last; between, activation sends while the first forwards run back to back and one
of each kind later (the larger counts). A gradient send holds the received bytes; an activation
send holds only what it had to copy to lay out densely (`copied_bytes`): the rest is kept.

A *checkpoint segment* is a maximal run of recomputed nodes in the stage's (topological) order.
A tensor produced in the stage is kept per in-flight micro-batch when a non-recomputed node
keeps it for backward, or when a segment reads it from outside itself (checkpoint keeps its
inputs). Tensors from earlier stages are kept as received.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from vpipe.common.buffering import (
    RECEIVES_AHEAD,
    SENDS_AHEAD,
    allreduce_copies,
    gradient_copies,
)
from vpipe.common.schedules import (
    allreduces_per_microbatch,
    in_flight_limit,
    replica_in_flight,
    replica_weight_versions,
    weight_versions,
)
from vpipe.planner.graph import PlanGraph
from vpipe.planner.schema import MemoryBreakdown, PlanSettings, StagePrediction

# `larger` below: max for numbers, numpy's elementwise maximum for the DP's tables, a variable
# bounded below by both for the ILP
Larger = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class ScheduleShape:
    """How a schedule multiplies a stage's per-micro-batch figures."""

    versions: int  # weight versions alive (weight stashing keeps one per in-flight mini-batch)
    in_flight: int  # micro-batches whose activations are alive at once


@dataclass(frozen=True)
class StageBytes:
    """The sums over a stage that its memory is made of. Each is a number for one stage, a numpy
    array over candidate stages for the DP, or a PuLP expression for the ILP: every solver
    computes these its own way and combines them with `stage_memory`, the one formula."""

    params: Any  # its nodes' parameters and buffers, and the tied copies it holds
    trainable: Any  # the trainable part of `params`
    kept: Any  # kept for backward per micro-batch (sent tensors included, received ones not)
    received: Any  # bytes crossing the cut before the stage
    sent: Any  # bytes crossing the cut after it
    copied: Any  # the part of `sent` a send copies to lay it out densely
    segment: Any  # the largest checkpoint segment's transient (0 without recompute)
    backward: Any  # the most the backward holds at once (`backward_peak_bytes`)


def schedule_shape(settings: PlanSettings, stage: int) -> ScheduleShape:
    return ScheduleShape(
        versions=weight_versions(settings.schedule, settings.gpus, stage),
        in_flight=in_flight_limit(settings.schedule, settings.gpus, settings.microbatches, stage),
    )


def replica_shape(settings: PlanSettings, replicas: int, workers_from_here: int) -> ScheduleShape:
    """The shape of one replica of a stage that has `replicas`, when it and the stages after it
    have `workers_from_here` processes in all (common/schedules.replica_in_flight)."""
    return ScheduleShape(
        versions=replica_weight_versions(settings.schedule, replicas, workers_from_here),
        in_flight=replica_in_flight(
            settings.schedule, settings.microbatches, replicas, workers_from_here
        ),
    )


@dataclass(frozen=True)
class AllReduce:
    """How long a replicated stage's gradient all-reduce takes: `factor` x (r - 1) / r x the
    gradient's bytes over the link's bandwidth."""

    name: str
    factor: float


# a ring all-reduce (NCCL's, gloo's ring): each replica sends 2 (r - 1) / r of the bytes and
# receives as many at the same time, over a full-duplex link
RING = AllReduce("ring", 2.0)
# PipeDream's optimizer's term, 4 (r - 1) / r: sending and receiving counted one after the other
PIPEDREAM_ALLREDUCE = AllReduce("pipedream", 4.0)


def allreduce_ms(
    trainable: Any,
    replicas: int,
    settings: PlanSettings,
    model: AllReduce = RING,
    cpu_ms_per_byte: float = 0.0,
) -> Any:
    """Milliseconds of one all-reduce of a stage's gradients among its `replicas`: the wire
    time, and the CPU each replica spends sending and receiving 2 (r - 1) / r of the bytes
    each way (`cpu_ms_per_byte`, the profile's link cost: on a CPU, gloo copies on the cores
    that compute)."""
    wire = model.factor * (replicas - 1) / replicas * wire_ms(trainable, settings)
    return wire + 4 * (replicas - 1) / replicas * trainable * cpu_ms_per_byte


def allreduce_share_ms(one_ms: Any, replicas: int, settings: PlanSettings) -> Any:
    """A replica's share of all-reduce time (`one_ms` each) per micro-batch it runs: once per
    backward under asp, once per step under the synchronous schedules
    (common/schedules.allreduces_per_microbatch)."""
    return allreduces_per_microbatch(settings.schedule, settings.microbatches, replicas) * one_ms


def replicated_time_ms(
    compute: Any, allreduce: Any, comm_in: Any, comm_out: Any, replicas: int, larger: Larger = max
) -> Any:
    """A stage's time per micro-batch of the pipeline when `replicas` share its micro-batches
    round-robin: each replica computes one in r and all-reduces its gradients (`allreduce`:
    its share per micro-batch, `allreduce_share_ms`; as long as compute: the update waits for
    it), and its links carry one micro-batch in r."""
    return stage_time_ms(compute + allreduce, comm_in, comm_out, larger) / replicas


def wire_ms(nbytes: Any, settings: PlanSettings) -> Any:
    """Milliseconds `nbytes` take one way between neighbouring stages at `bandwidth_gbps`."""
    return nbytes * (1 / (settings.bandwidth_gbps * 1e6))  # 0 at infinite bandwidth


def comm_ms(nbytes: Any, settings: PlanSettings) -> Any:
    """Each side's communication time for a cut `nbytes` cross: the activations one way, their
    gradients (as large) back."""
    return 2 * wire_ms(nbytes, settings)


def boundary_ms(graph: PlanGraph) -> float:
    """What each boundary of a stage (a cut, or an end of the pipeline) adds to its compute:
    half the calls' cost `call_ms` every stage pays whichever nodes it holds. Each stage has two
    boundaries, so each pays it once; every solver charges a boundary where it charges a cut's
    link work, at every cut and both ends, and no formula needs a count of stages."""
    return graph.call_ms / 2


def stage_compute_ms(
    work: Any, recompute: Any, link_before: Any, link_after: Any, speed: float = 1.0
) -> Any:
    """A stage's busy time per micro-batch: its nodes' forward and backward, the forwards it
    recomputes, and the CPU each of its two cuts' transfers take from it, on a device that
    takes `speed` times as long as the profiled one (`PlanSettings.stage_speeds`)."""
    return (work + recompute + link_before + link_after) * speed


def stage_time_ms(compute: Any, comm_in: Any, comm_out: Any, larger: Larger = max) -> Any:
    """A stage's time per micro-batch: communication overlaps compute, so the longest of the
    three."""
    return larger(compute, larger(comm_in, comm_out))


def message_delay_ms(
    link_ms: float, copy_ms: float, comm_ms: float, latency_ms: float | None = None
) -> float:
    """From the end of the action that sends a cut's tensors to when the next stage can use
    them, one way: a message's latency, the receiving end's copies of the bytes (`copy_ms`, the
    part of the cut's link work `link_ms` that scales with them) and the wire (`link_ms`,
    `copy_ms` and `comm_ms` count both directions). The latency is `latency_ms` where
    `vpipe-probe` measured it; else the receiving end's share of the link's per-message work
    stands for it. What a stage waits for on the schedule's dependency chain
    (planner/waiting.py)."""
    per_message = (link_ms - copy_ms) / 2 if latency_ms is None else latency_ms
    return per_message + copy_ms / 2 + comm_ms / 2


def link_buffer_bytes(
    received: Any, sent: Any, copied: Any, first: bool, last: bool, larger: Larger = max
) -> Any:
    """What a stage's links hold beside the micro-batches in flight (see the module docstring):
    the receives posted ahead (activations; gradients, whose one in use is counted nowhere
    else) and the sends not yet waited on."""
    if first and last:
        return 0 * received
    posted = RECEIVES_AHEAD * received + (1 + RECEIVES_AHEAD) * sent
    if first:
        pending = SENDS_AHEAD * copied
    elif last:
        pending = SENDS_AHEAD * received
    else:  # forwards back to back before the first backward, then one send of each kind
        pending = larger(SENDS_AHEAD * copied, copied + received)
    return posted + pending


def stage_memory(
    settings: PlanSettings,
    index: int,
    optimizer_factor: int,
    sums: StageBytes,
    larger: Larger = max,
    shape: ScheduleShape | None = None,
    last: bool | None = None,
    replicas: int = 1,
) -> MemoryBreakdown:
    """Stage `index`'s bytes by kind, from its sums: the one memory formula every solver uses
    (fields are of the sums' type). A straight pipeline's stage `index` of `settings.gpus` by
    default; a replica's `shape` (`replica_shape`), whether its stage is the `last` and its
    stage's `replicas` otherwise."""
    shape = schedule_shape(settings, index) if shape is None else shape
    first = index == 0
    last = index == settings.gpus - 1 if last is None else last
    return MemoryBreakdown(
        params=sums.params,
        stash=sums.trainable * (shape.versions - 1),
        grads=sums.trainable * (gradient_copies(settings.schedule) + allreduce_copies(replicas)),
        optimizer=sums.trainable * optimizer_factor,
        activations=shape.in_flight * (sums.kept + sums.received),
        buffers=link_buffer_bytes(sums.received, sums.sent, sums.copied, first, last, larger),
        transient=sums.segment + sums.backward,
    )


def crossing_bytes(graph: PlanGraph, prefix: Collection[int]) -> int:
    """Bytes of the tensors produced in `prefix` and needed after it (the model's outputs are
    needed by the loss on the last stage)."""
    return sum(graph.out_bytes[u] for u in _crossing(graph, prefix))


def crossing_link_ms(graph: PlanGraph, prefix: Collection[int]) -> float:
    """CPU milliseconds each end of the cut after `prefix` spends on the tensors crossing it."""
    return sum(graph.link_ms[u] for u in _crossing(graph, prefix))


def cut_delay_ms(
    graph: PlanGraph, settings: PlanSettings, prefix: Collection[int], comm_ms: float
) -> float:
    """`message_delay_ms` of the cut after `prefix`, whose wire time is `comm_ms` (0 after the
    last stage: no cut)."""
    crossing = _crossing(graph, prefix)
    if not crossing:
        return 0.0
    link = sum(graph.link_ms[u] for u in crossing)
    copies = sum(graph.copy_ms[u] for u in crossing)
    return message_delay_ms(link, copies, comm_ms, settings.latency_ms)


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
    sums = stage_bytes(graph, before, stage, ())
    free = replace(sums, kept=0, segment=0)
    return int(stage_memory(settings, index, graph.optimizer_factor, free).total)


def tied_copy_bytes(graph: PlanGraph, stage: Collection[int]) -> tuple[int, int]:
    """(parameter, trainable) bytes of the tied copies `stage` holds: of each parameter that a
    node of the stage uses while its owner (the first user, which the profile charges) runs on
    another stage. A copy is a weight of the stage like its own: it has the stage's versions,
    a gradient and optimizer state (runtime/tied.py updates every copy)."""
    members = set(stage)
    copies = [t for t in graph.ties if t.users[0] not in members and members.intersection(t.users)]
    return sum(t.param_bytes for t in copies), sum(t.trainable_bytes for t in copies)


def stage_bytes(
    graph: PlanGraph, before: Collection[int], stage: Sequence[int], recompute: Collection[int]
) -> StageBytes:
    """The sums `stage_memory` combines, for a stage whose earlier stages hold `before`."""
    sending = sent_nodes(graph, before, stage)
    kept, segment = kept_bytes(graph, stage, recompute, sending)
    tied_params, tied_trainable = tied_copy_bytes(graph, stage)
    return StageBytes(
        params=sum(graph.param_bytes[n] for n in stage) + tied_params,
        trainable=sum(graph.trainable_bytes[n] for n in stage) + tied_trainable,
        kept=kept,
        received=crossing_bytes(graph, before),
        sent=crossing_bytes(graph, set(before) | set(stage)),
        copied=sum(graph.copied_bytes[u] for u in sending),
        segment=segment,
        backward=backward_peak_bytes(graph, stage),
    )


def evaluate_stage(
    graph: PlanGraph,
    settings: PlanSettings,
    index: int,
    before: Collection[int],
    stage: Sequence[int],
    recompute: Collection[int],
) -> StagePrediction:
    """Predicted time and memory of stage `index`, whose earlier stages hold `before`."""
    recompute_ms = sum(graph.fwd_ms[n] for n in recompute)
    link_before, link_after = (
        crossing_link_ms(graph, before),
        crossing_link_ms(graph, [*before, *stage]),
    )
    work = sum(graph.compute_ms(n) for n in stage)
    speed = settings.speed(index)
    edge = boundary_ms(graph)
    compute = stage_compute_ms(work, recompute_ms, link_before + edge, link_after + edge, speed)
    sums = stage_bytes(graph, before, stage, recompute)
    comm_in, comm_out = comm_ms(sums.received, settings), comm_ms(sums.sent, settings)
    return StagePrediction(
        compute_ms=compute,
        recompute_ms=recompute_ms * speed,
        comm_in_ms=comm_in,
        comm_out_ms=comm_out,
        time_ms=stage_time_ms(compute, comm_in, comm_out),
        memory=stage_memory(settings, index, graph.optimizer_factor, sums),
        transfer_ms=(link_before + link_after) * speed,
        allreduce_ms=0.0,
        delay_ms=cut_delay_ms(graph, settings, [*before, *stage], comm_out),
    )


@dataclass(frozen=True)
class ReplicatedPrediction:
    """What the cost model predicts for a stage with data-parallel replicas."""

    replicas: int
    time_ms: float  # per micro-batch of the pipeline, the replicas sharing them
    allreduce_ms: float  # one all-reduce of its gradients among the replicas
    memory: MemoryBreakdown  # of one replica


def evaluate_replicated_stage(
    graph: PlanGraph,
    settings: PlanSettings,
    position: tuple[int, bool],
    before: Collection[int],
    stage: Sequence[int],
    replicas: int,
    workers_from_here: int,
    model: AllReduce = RING,
    recompute: Collection[int] = (),
) -> ReplicatedPrediction:
    """Predicted time and memory of a stage at `position` (its index, whether it is the last)
    with `replicas`, whose earlier stages hold `before`, when it and the stages after it have
    `workers_from_here` processes, recomputing `recompute`."""
    index, last = position
    one = evaluate_stage(graph, settings, index, before, stage, recompute)
    sums = stage_bytes(graph, before, stage, recompute)
    one_ms = allreduce_ms(sums.trainable, replicas, settings, model, graph.link_ms_per_byte)
    shape = replica_shape(settings, replicas, workers_from_here)
    return ReplicatedPrediction(
        replicas=replicas,
        time_ms=replicated_time_ms(
            one.compute_ms,
            allreduce_share_ms(one_ms, replicas, settings),
            one.comm_in_ms,
            one.comm_out_ms,
            replicas,
        ),
        allreduce_ms=one_ms,
        memory=stage_memory(
            settings, index, graph.optimizer_factor, sums, shape=shape, last=last, replicas=replicas
        ),
    )
