"""The profile as the planner sees it: indexed nodes, edges, and who keeps which tensor.

A *tensor* is named by the node that owns its storage (views resolved through `view_of`), and
each tensor knows its *holders*: the nodes that keep it for backward (consumers listed in their
`saved_inputs`, and the node that saves its own output). Everything here is computed once per
profile and read by the cost model and the solvers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import networkx as nx

from vpipe.common.buffering import sums_gradients
from vpipe.common.errors import VpipeError
from vpipe.common.optimizers import OPTIMIZER_STATE_FACTOR
from vpipe.common.schedules import updates_per_microbatch
from vpipe.profiler.schema import LinkCost, NodeProfile, Profile

FLOATING = ("float", "bfloat")  # dtype names whose tensors carry gradients (as the runtime sends)
PIPEDREAM_NOTE = (
    "saved-for-backward bytes are unknown in this profile (imported from PipeDream): each node "
    "that computes is assumed to keep its own output, as PipeDream's memory model does"
)


@dataclass(frozen=True)
class GraphTie:
    """A parameter several nodes use. The profile charges its bytes to `users[0]` (the owner);
    a stage that runs another user but not the owner holds a copy of it."""

    names: tuple[str, ...]
    users: tuple[int, ...]  # ascending
    param_bytes: int
    trainable_bytes: int  # 0 for a frozen parameter: no gradient, no optimizer state


@dataclass(frozen=True)
class PlanGraph:
    """Per-node arrays, indexed by topological position."""

    names: tuple[str, ...]
    preds: tuple[tuple[int, ...], ...]
    succs: tuple[tuple[int, ...], ...]
    fwd_ms: tuple[float, ...]  # zero for graph inputs (PipeDream's Input nodes cost nothing)
    bwd_ms: tuple[float, ...]
    param_bytes: tuple[int, ...]  # parameters and buffers: one live copy
    trainable_bytes: tuple[int, ...]  # parameters that get gradients and optimizer state
    optimizer_factor: int  # optimizer state bytes per trainable byte
    out_bytes: tuple[int, ...]
    internal_bytes: tuple[int, ...]  # kept for backward beyond inputs and own output
    backward_bytes: tuple[int, ...]  # held by the backward while this node's runs (0: unknown)
    copied_bytes: tuple[int, ...]  # outputs not laid out densely: a send copies them first
    link_ms: tuple[float, ...]  # CPU each end spends moving the output across a cut and back
    copy_ms: tuple[float, ...]  # of link_ms, what scales with the bytes (the rest: per message)
    owner: tuple[int, ...]  # node owning the storage of each node's output (itself unless a view)
    holders: tuple[tuple[int, ...], ...]  # per tensor (owner node): nodes that keep it
    keeps: tuple[tuple[int, ...], ...]  # per node: tensors (owner nodes) it keeps
    reads: tuple[tuple[int, ...], ...]  # per node: tensors (owner nodes) it takes as input
    outputs: tuple[int, ...]  # nodes whose values the model returns: they reach the last stage
    notes: tuple[str, ...] = ()
    # placeholders (read from the batch) and the loss (run outside the stage's module)
    never_recomputed: frozenset[int] = frozenset()
    loss: int | None = None  # the loss's node, if the profile measured it: not in plan files
    # node groups that must share a stage: a value that is not one tensor (a size, a device, a
    # tuple) cannot be sent between stages, so its producer stays with its readers
    together: tuple[tuple[int, ...], ...] = ()
    ties: tuple[GraphTie, ...] = ()
    # CPU each end of a transfer spends per byte it sends or receives (the profile's link cost)
    link_ms_per_byte: float = 0.0
    # what every stage pays per micro-batch whichever nodes it holds: its first update's and
    # first accumulation's call after a backward (profile `update_call_ms`,
    # `accumulate_call_ms`), as often as the schedule makes them (costmodel.boundary_ms)
    call_ms: float = 0.0

    def splits_a_group(self, mask: int) -> bool:
        """Whether the node set `mask` holds part of a `together` group but not all of it."""
        return any(0 < sum(mask >> n & 1 for n in group) < len(group) for group in self.together)

    @property
    def size(self) -> int:
        return len(self.names)

    def compute_ms(self, i: int) -> float:
        return self.fwd_ms[i] + self.bwd_ms[i]

    def transient_bytes(self, i: int) -> int:
        """What recomputing node i materialises for one micro-batch during its backward."""
        own = self.out_bytes[i] if self.owner[i] == i and self.holders[i] else 0
        return self.internal_bytes[i] + own


def plan_graph(
    profile: Profile,
    optimizer: str | None = None,
    schedule: str = "asp",
    microbatches: int = 1,
    message_ms: float | None = None,
) -> PlanGraph:
    """Index a profile for planning; `optimizer` overrides the profile's for state bytes. A
    node's backward time takes its share of the work on its gradients after each backward:
    `update_ms` once per micro-batch under asp, once per M under 1f1b and gpipe
    (`updates_per_microbatch`), and under those `accumulate_ms`, adding them into the step's
    running sum (`sums_gradients`); each stage pays the calls' own cost at those rates too
    (`call_ms`). `message_ms`: what a message costs each end of a cut, as
    `vpipe-probe` measured it in the runtime, instead of the profile's two-thread figure (the
    cost per MiB stays the profile's)."""
    link = _link_cost(profile.link, message_ms)
    updates = updates_per_microbatch(schedule, microbatches)
    sums = 1.0 if sums_gradients(schedule) else 0.0
    # the loss is one more node, after the outputs it reads: it lands on the last stage, which
    # runs it; what its backward adds is its backward peak, like any node's
    nodes = (*profile.nodes, profile.loss) if profile.loss else profile.nodes
    index = {node.name: i for i, node in enumerate(nodes)}
    preds = tuple(tuple(sorted({index[p] for p in n.inputs})) for n in nodes)
    succs: list[list[int]] = [[] for _ in nodes]
    for i, ps in enumerate(preds):
        for p in ps:
            succs[p].append(i)
    owner = list(range(len(nodes)))
    for i, node in enumerate(nodes):
        if node.view_of:
            owner[i] = owner[index[node.view_of]]
    unknown = any(n.saved_bytes is None for n in nodes)
    holders: list[list[int]] = [[] for _ in nodes]
    keeps = []
    internal = []
    for i, node in enumerate(nodes):
        kept = {owner[index[name]] for name in node.saved_inputs}
        # unknown (PipeDream): a node that computes keeps its output; bookkeeping ops do not
        saves_output = node.saves_output or (
            node.saved_bytes is None and node.compute_ms > 0 and node.op != "placeholder"
        )
        if saves_output:
            kept.add(owner[i])
        internal.append(node.saved_bytes or 0)  # its output, if kept, is counted as a tensor
        keeps.append(tuple(sorted(kept)))
        for t in kept:
            holders[t].append(i)
    placeholder = [n.op == "placeholder" for n in nodes]
    first_input = placeholder.index(True) if any(placeholder) else -1
    factor = OPTIMIZER_STATE_FACTOR[optimizer or profile.optimizer]
    return PlanGraph(
        names=tuple(n.name for n in nodes),
        preds=preds,
        succs=tuple(tuple(s) for s in succs),
        fwd_ms=tuple(
            _forward_ms(profile, n, placeholder[i] and i == first_input)
            for i, n in enumerate(nodes)
        ),
        bwd_ms=tuple(
            0.0
            if placeholder[i]
            else n.backward_ms + n.update_ms * updates + n.accumulate_ms * sums
            for i, n in enumerate(nodes)
        ),
        param_bytes=tuple(n.param_bytes + n.buffer_bytes for n in nodes),
        trainable_bytes=tuple(n.grad_bytes for n in nodes),
        optimizer_factor=factor,
        out_bytes=tuple(n.output_bytes for n in nodes),
        internal_bytes=tuple(internal),
        backward_bytes=tuple(_backward_bytes(n) for n in nodes),
        copied_bytes=tuple(_copied_bytes(n) for n in nodes),
        link_ms=tuple(_link_ms(link, n) for n in nodes),
        copy_ms=tuple(_copy_ms(link, n) for n in nodes),
        link_ms_per_byte=link.ms_per_mib / 2**20 if link else 0.0,
        call_ms=profile.update_call_ms * updates + profile.accumulate_call_ms * sums,
        owner=tuple(owner),
        holders=tuple(tuple(h) for h in holders),
        keeps=tuple(keeps),
        reads=tuple(tuple(sorted({owner[p] for p in ps})) for ps in preds),
        outputs=tuple(index[name] for name in profile.outputs)
        if profile.source_kind == "model"
        else (),
        notes=(PIPEDREAM_NOTE,) if unknown else (),
        never_recomputed=frozenset(
            i for i, n in enumerate(nodes) if placeholder[i] or n.op == "loss"
        ),
        loss=len(nodes) - 1 if profile.loss else None,
        together=_convex(_with_loss(_together(profile, succs), index, profile), succs)
        if profile.source_kind == "model"
        else (),
        ties=tuple(
            GraphTie(
                tie.names,
                tuple(sorted(index[u] for u in tie.users)),
                tie.bytes,
                tie.bytes if tie.trainable else 0,
            )
            for tie in profile.ties
        ),
    )


def _forward_ms(profile: Profile, node: NodeProfile, first_input: bool) -> float:
    """A node's forward; the stage that reads the batch makes it (`batch_ms`): counted on the
    first input (a placeholder: otherwise free) and on the loss (the target, on the last
    stage). A model whose inputs land on several stages makes it there too: not counted."""
    if node.op == "placeholder":
        return profile.batch_ms if first_input else 0.0
    return node.forward_ms + (profile.batch_ms if node.op == "loss" else 0.0)


def _backward_bytes(node: NodeProfile) -> int:
    """A loss profiled before `backward_bytes` existed recorded its backward's peak as its
    workspace."""
    if node.backward_bytes is None and node.op == "loss":
        return node.workspace_bytes or 0
    return node.backward_bytes or 0


def _copied_bytes(node: NodeProfile) -> int:
    """Bytes of the node's outputs that are not contiguous (its output bytes shared out by
    element count: outputs of one node share a dtype in practice)."""
    elements = sum(m.numel for m in node.outputs)
    strided = sum(m.numel for m in node.outputs if not m.contiguous)
    return node.output_bytes * strided // elements if strided else 0


def _link_cost(link: LinkCost | None, message_ms: float | None) -> LinkCost | None:
    """The profile's link cost, each message costing `message_ms` when given. A profile without
    one has transfers that take no compute core's time."""
    if message_ms is None:
        return link
    if link is None:
        raise VpipeError(
            "--message-ms: this profile has no link cost (its transfers do not take the "
            "compute cores' time: a GPU profile, or PipeDream's); leave it out"
        )
    return dataclasses.replace(link, message_ms=message_ms)


def _link_ms(link: LinkCost | None, node: NodeProfile) -> float:
    """CPU milliseconds each end of a cut spends when the node's output crosses it: the
    activation's message forward and, for floating-point tensors, the gradient's back (the
    profile's `link` cost; none measured: nothing)."""
    if link is None or not node.outputs:
        return 0.0
    floats = [m for m in node.outputs if m.dtype.startswith(FLOATING)]
    messages = len(node.outputs) + len(floats)
    return messages * link.message_ms + _copy_ms(link, node)


def _copy_ms(link: LinkCost | None, node: NodeProfile) -> float:
    """The part of `_link_ms` that scales with the bytes: the activation's copies forward and
    the floating-point ones' gradients back, per MiB."""
    if link is None or not node.outputs:
        return 0.0
    floats = sum(m.numel for m in node.outputs if m.dtype.startswith(FLOATING))
    elements = sum(m.numel for m in node.outputs) or 1
    moved = node.output_bytes * (1 + floats / elements)
    return moved / 2**20 * link.ms_per_mib


def _with_loss(
    groups: tuple[tuple[int, ...], ...], index: dict[str, int], profile: Profile
) -> tuple[tuple[int, ...], ...]:
    """The loss shares a stage with the node of the model's last output in the profile's order
    (and that node's group), so no stage is left holding the loss alone, with nothing of the
    model to run. The last: every output reaches the loss's stage anyway, and tying it to an
    earlier one (features the rest of the model reads, say) would pull everything between
    onto the last stage."""
    if profile.loss is None or not profile.outputs:
        return groups
    last, loss = max(index[name] for name in profile.outputs), index[profile.loss.name]
    joined = next((g for g in groups if last in g), (last,))
    return (*(g for g in groups if g is not joined), tuple(sorted((*joined, loss))))


def _together(profile: Profile, succs: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    """Groups joined by values that are not one tensor (union-find over producer-reader; the
    loss, after the last node, among the readers)."""
    parent = list(range(len(succs)))

    def root(n: int) -> int:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for i, node in enumerate(profile.nodes):
        if node.op != "placeholder" and (len(node.outputs) != 1 or not node.is_tensor):
            for reader in succs[i]:
                parent[root(reader)] = root(i)
    groups: dict[int, list[int]] = {}
    for n in range(len(parent)):
        groups.setdefault(root(n), []).append(n)
    return tuple(tuple(g) for g in groups.values() if len(g) > 1)


def _convex(
    groups: tuple[tuple[int, ...], ...], succs: Sequence[Sequence[int]]
) -> tuple[tuple[int, ...], ...]:
    """Every set of nodes that must share a stage. An edge u -> v puts v on u's stage or later;
    a group's members are on one stage, as if joined in a cycle; so the nodes that must share a
    stage are the strongly connected components of the edges and those cycles. That takes in a
    node on a path between two members (a shape read before an attention and used after it)
    and two groups that each feed the other. Without it some group could never be held whole
    by a cut, and the cuts would never reach the whole graph."""
    graph: nx.DiGraph[int] = nx.DiGraph()
    graph.add_nodes_from(range(len(succs)))
    graph.add_edges_from((u, v) for u, readers in enumerate(succs) for v in readers)
    for group in groups:
        ordered = sorted(group)
        graph.add_edges_from(zip(ordered, [*ordered[1:], ordered[0]], strict=True))
    components = nx.strongly_connected_components(graph)
    return tuple(sorted(tuple(sorted(c)) for c in components if len(c) > 1))
