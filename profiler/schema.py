"""The profile file: what `vpipe-profile` writes (measured, or imported from a PipeDream
graph.txt) and `vpipe-plan` and `vpipe-gen` read.

Frozen records; `from_dict` checks the schema version and decodes every field
(`common.records.decode`), so dictionaries exist only at the YAML edge. No torch here: the
planner reads profiles through this module. docs/profile-format.md gives every field's meaning.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vpipe.common.errors import VpipeError
from vpipe.common.optimizers import OPTIMIZERS
from vpipe.common.paths import recorded_model, recorded_path, resolved_model, resolved_path
from vpipe.common.records import Bytes, Count, Millis, Positive, decode
from vpipe.common.yamlfile import check_header, load_yaml, plain, save_yaml

# 2: capture route, input keys, is_tensor, ties; 3: no optimizer_bytes (the planner counts the
# optimizer's state from `optimizer`, or vpipe-plan --optimizer); 4: saved_bytes leaves out
# the node's output (`saves_output` says it is kept; the planner counts it once, as a tensor);
# 5: accumulate_ms; 6: on a CPU, node times taken in whole passes of the graph, in order
# (profiler/sequence.py), and update_ms counts the runtime's check that gradients are finite;
# 7: on a CPU, update_ms and accumulate_ms timed in those passes too, after each backward;
# 8: on a CPU, the loss's times and batch_ms timed in those passes too (each pass makes its
# micro-batch and runs its backward from the loss); 9: beside (busy neighbours while timing);
# 10: on a CPU, each time is the mean over those passes, not the median; 11: update_call_ms,
# accumulate_call_ms (what every stage's first update and accumulation after a backward cost)
SCHEMA_VERSION = 11


@dataclass(frozen=True)
class TensorMeta:
    """Shape and dtype of one tensor a node produces, and whether its elements are laid out
    densely in order (sending a tensor that is not copies it first)."""

    shape: tuple[Count, ...]
    dtype: str
    contiguous: bool = True

    @property
    def numel(self) -> int:
        n = 1
        for dim in self.shape:
            n *= dim
        return n


LOSS_NODE = "(loss)"  # the loss's name as a node: no graph node can have it (not an identifier)


@dataclass(frozen=True)
class NodeProfile:
    """One node of the captured graph: its edges, its times and its bytes.

    `saved_bytes` counts what autograd keeps for this node's backward *other than its inputs
    and its output*; the inputs it keeps are named in `saved_inputs` and its output by
    `saves_output`, so a stage's saved memory sums each kept tensor once, by its owner.
    A view (`view_of`) shares its storage with an earlier node's output: resolve it before
    summing, or a tensor kept through a view counts twice.
    `saved_bytes` is None when unknown (profiles imported from PipeDream).
    """

    name: str
    op: str  # placeholder | get_attr | call_module | call_function | call_method | layer
    target: str  # module class, function or method name; PipeDream's layer description
    inputs: tuple[str, ...]
    outputs: tuple[TensorMeta, ...]
    forward_ms: Millis
    backward_ms: Millis
    param_bytes: Bytes
    grad_bytes: Bytes
    buffer_bytes: Bytes
    output_bytes: Bytes
    saved_bytes: Bytes | None
    saved_inputs: tuple[str, ...] = ()
    saves_output: bool = False
    view_of: str = ""  # earlier node whose storage this node's output shares (a view of it)
    workspace_bytes: Bytes | None = None  # transient peak above inputs and outputs (CUDA only)
    update_ms: Millis = 0.0  # one optimizer step on this node's trainable parameters
    # adding one micro-batch's gradients of them into the step's running sum, which the
    # synchronous schedules keep (common/buffering.sums_gradients)
    accumulate_ms: Millis = 0.0
    # the most the model's backward holds at once while this node's backward runs, of tensors
    # the backward made (gradients still to be used, its temporaries; parameter gradients
    # apart): None when unknown (PipeDream)
    backward_bytes: Bytes | None = None
    module: str = ""  # qualified submodule name, so later parts keep state_dict keys
    parameters: tuple[str, ...] = ()  # qualified names of the parameters this node owns
    # the node's value is one tensor (a tuple holding one tensor and a None is not): only such
    # values travel between stages
    is_tensor: bool = True

    @property
    def compute_ms(self) -> float:
        return self.forward_ms + self.backward_ms


@dataclass(frozen=True)
class WholeModel:
    """One full forward and backward of the model: the reference the node sums are judged by."""

    forward_ms: Millis
    backward_ms: Millis
    peak_bytes: Bytes | None = None  # CUDA only

    @property
    def compute_ms(self) -> float:
        return self.forward_ms + self.backward_ms


@dataclass(frozen=True)
class LinkCost:
    """CPU time one end of a point-to-point transfer costs its stage's process, over the
    backend the runtime uses on this device (profiler/linkcost.py): on a CPU, gloo copies the
    bytes on the cores the stages compute on."""

    backend: str
    message_ms: Millis  # per tensor sent or received
    ms_per_mib: Millis


@dataclass(frozen=True)
class Tie:
    """A parameter more than one node uses (tied weights, a module called twice). Its bytes are
    charged to its first user only (`users[0]`, the owner); a stage that runs another user but
    not the owner holds a copy of it, which the planner counts there."""

    names: tuple[str, ...]  # every qualified name it has in the model; first: the owner's
    bytes: Bytes
    trainable: bool
    users: tuple[str, ...]  # the nodes that use it, in graph order


@dataclass(frozen=True)
class Profile:
    """A model's graph with per-node measurements, in topological order."""

    source: str  # model file (on disk: relative to the profile), module or graph.txt
    source_kind: str  # "model" | "pipedream"
    device: str
    dtype: str
    batch_size: Positive | None
    optimizer: str
    nodes: tuple[NodeProfile, ...]
    outputs: tuple[str, ...]  # nodes whose values the model returns
    torch_version: str | None = None
    seed: int | None = None  # torch.manual_seed before build_model(): later parts rebuild it
    threads: Positive | None = None  # CPU threads the times were measured with (None: not on CPU)
    # processes that trained the model beside the timing, standing for the other stages that
    # share the machine (vpipe-profile --beside; profiler/neighbours.py)
    beside: Count = 0
    source_sha256: str | None = None
    leaves: tuple[str, ...] = ()
    whole_model: WholeModel | None = None
    # making one micro-batch with the model file's make_batch: the runtime does it on every
    # forward of the stages that read the batch (the inputs' stage; the last, for the target)
    batch_ms: Millis = 0.0
    # on a CPU, what a stage's first update (its finite check and step) and its first
    # accumulation after each backward cost beyond their tensors' work, whichever weights it
    # holds: each stage pays them, where a node's update_ms and accumulate_ms leave them out
    # (profiler/sequence.py); 0 on CUDA and in PipeDream imports
    update_call_ms: Millis = 0.0
    accumulate_call_ms: Millis = 0.0
    # the loss on the model's outputs, as one more node that reads them: the last stage runs it.
    # saved_bytes: what it keeps for backward; backward_bytes: the peak its backward adds
    loss: NodeProfile | None = None
    # what a transfer between stages costs each end's CPU; None where the copy does not run on
    # the cores that compute (CUDA: NCCL copies on the GPU) or was not measured (PipeDream)
    link: LinkCost | None = None
    notes: tuple[str, ...] = ()
    capture: str = "fx"  # how the graph was captured: "fx" or "export" (common/capture.py)
    # per placeholder node, in order: the key of make_batch's input it takes ("0", "1", ... for
    # positional inputs, the keyword for a dict)
    input_keys: tuple[str, ...] = ()
    ties: tuple[Tie, ...] = ()  # parameters several nodes use (none in PipeDream imports)
    schema_version: int = SCHEMA_VERSION
    _index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index.update({node.name: i for i, node in enumerate(self.nodes)})
        _validate(self)

    def node(self, name: str) -> NodeProfile:
        return self.nodes[self._index[name]]

    @property
    def node_compute_ms(self) -> float:
        return sum(node.compute_ms for node in self.nodes)

    @property
    def honesty(self) -> float | None:
        """Sum of per-node times over the whole-model time (1.0 = the parts add up exactly)."""
        if self.whole_model is None or self.whole_model.compute_ms <= 0:
            return None
        return self.node_compute_ms / self.whole_model.compute_ms

    @property
    def graph_sha256(self) -> str:
        """Fingerprint of the graph's structure, so later parts can tell the model changed."""
        digest = hashlib.sha256()
        for node in self.nodes:
            shapes = ";".join(f"{m.shape}{m.dtype}" for m in node.outputs)
            digest.update(f"{node.name}|{node.op}|{node.target}|{node.inputs}|{shapes}\n".encode())
        return digest.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema_version": self.schema_version}
        for f in fields(self):
            if f.name in ("schema_version", "_index"):
                continue
            data[f.name] = plain(getattr(self, f.name))
        data["graph_sha256"] = self.graph_sha256
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "profile") -> Profile:
        check_header(
            data,
            SCHEMA_VERSION,
            where,
            "profile",
            "re-run vpipe-profile with this version of vpipe",
        )
        body = {k: v for k, v in data.items() if k not in ("schema_version", "graph_sha256")}
        profile = decode(cls, body, where, "profile", "re-run vpipe-profile")
        recorded = data.get("graph_sha256")
        if recorded != profile.graph_sha256:
            raise VpipeError(f"{where}: graph_sha256 does not match its nodes; the file was edited")
        return profile


def _validate(profile: Profile) -> None:
    if profile.optimizer not in OPTIMIZERS:
        raise VpipeError(
            f"unknown optimizer {profile.optimizer!r}; use one of {', '.join(OPTIMIZERS)}"
        )
    if not profile.nodes:
        raise VpipeError("profile has no nodes")
    if len(profile._index) != len(profile.nodes):
        names = [node.name for node in profile.nodes]
        twice = sorted({name for name in names if names.count(name) > 1})
        raise VpipeError(f"profile has two nodes named {', '.join(map(repr, twice))}")
    for position, node in enumerate(profile.nodes):
        for source in (*node.inputs, *([node.view_of] if node.view_of else [])):
            if profile._index.get(source, position) >= position:
                raise VpipeError(
                    f"node {node.name!r} reads {source!r}, which is not an earlier node; "
                    "nodes must be in topological order"
                )
        if not set(node.saved_inputs) <= set(node.inputs):
            raise VpipeError(f"node {node.name!r} keeps a tensor that is not one of its inputs")
    for name in profile.outputs:
        if name not in profile._index:
            raise VpipeError(f"profile output {name!r} is not a node")
    for tie in profile.ties:
        unknown = [name for name in tie.users if name not in profile._index]
        if unknown or len(tie.users) < 2 or not tie.names:
            raise VpipeError(
                f"tie {'/'.join(tie.names)!r}: needs a name and two or more users that are "
                f"nodes (users {list(tie.users)})"
            )


def save_profile(profile: Profile, path: str | Path) -> None:
    """Write a profile; its `source`, a file, relative to the profile's directory."""
    data = profile.to_dict()
    if profile.source_kind == "pipedream":
        data["source"] = recorded_path(profile.source, path)
    else:
        data["source"] = recorded_model(profile.source, path)
    save_yaml(data, path)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file; its `source`, a file, as seen from here."""
    data = load_yaml(path, "profile")
    if isinstance(data, dict) and isinstance(data.get("source"), str):
        resolve = resolved_path if data.get("source_kind") == "pipedream" else resolved_model
        data["source"] = resolve(data["source"], path)
    return Profile.from_dict(data, where=str(path))
