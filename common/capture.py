"""Capture a model as an fx graph at a granularity a planner can use.

Two routes give graphs of one shape. torch.fx symbolic tracing, tried first for positional
inputs: `torch.nn` modules stay whole (fx's default), functional ops become nodes, and any
submodule class the user names with `--leaf` is kept whole too (how attention blocks stay one
node, or an untraceable block is taken whole). Where fx cannot trace (Hugging Face models: their
forwards take `**kwargs` through decorators and branch on shapes) or the inputs are keyword
arguments, non-strict torch.export (export_capture.py). See docs/profiling.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

from vpipe.common.errors import VpipeError
from vpipe.common.export_capture import export_graph
from vpipe.common.modelfile import Batch


class _LeafTracer(fx.Tracer):
    """An fx tracer that keeps named classes whole and remembers where tracing failed."""

    def __init__(self, leaves: frozenset[str]) -> None:
        super().__init__()
        self.leaves = leaves
        self.failed_in: tuple[str, str] | None = (
            None  # (module path, class) of the innermost failure
        )

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m).__name__ in self.leaves or super().is_leaf_module(m, module_qualified_name)

    def call_module(
        self,
        m: nn.Module,
        forward: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = (self.path_of_module(m), type(m).__name__)
            raise


ROUTES = ("fx", "export")


@dataclass(frozen=True)
class Captured:
    """A model as an fx graph with flat tensor inputs and outputs, and the maps between those
    and what the user's code passes and gets back."""

    graph: fx.GraphModule
    route: str  # "fx" (symbolic tracing) or "export" (non-strict torch.export)
    input_keys: tuple[str, ...]  # per placeholder, in order: the key of its batch input
    output_spec: pytree.TreeSpec  # the model's output structure over the output leaves
    output_leaves: tuple[str, ...]  # the nodes at the spec's leaves, in order

    def output(self, values: Sequence[Any]) -> Any:
        """The model's output (a tensor, tuple, dict, ModelOutput...) from the leaves' values."""
        return pytree.tree_unflatten(list(values), self.output_spec)


def capture(
    model: nn.Module, batch: Batch, leaves: Sequence[str] = (), route: str | None = None
) -> Captured:
    """Capture `model` as called on `batch`: by torch.fx where it traces (module-level graphs,
    any batch size), else by non-strict torch.export (see export_capture). `route` forces one,
    as a profile records which ran.

    Raises VpipeError naming what could not be captured and what to try.
    """
    classes = {type(m).__name__ for m in model.modules()}
    unknown = sorted(set(leaves) - classes)
    if unknown:
        raise VpipeError(
            f"--leaf {' '.join(unknown)}: no submodule of this model has that class; "
            f"its classes are {', '.join(sorted(classes))}"
        )
    fx_error: VpipeError | None = None
    if route == "fx" or (route is None and not batch.keyword):
        try:
            captured = _by_fx(model, leaves)
            _check_same_as_model(model, captured, batch)
            _check_recordable(captured.output_spec)
            return captured
        except VpipeError as err:
            if route == "fx":
                raise
            fx_error = err
    try:
        gm, spec = export_graph(model, batch.args, batch.kwargs, leaves)
    except VpipeError as err:
        raise VpipeError(f"{fx_error}; {err}" if fx_error else str(err)) from None
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    keys = tuple(key for key, _ in batch.inputs)
    if len(placeholders) != len(keys):
        raise VpipeError(
            f"torch.export made {len(placeholders)} inputs of the {len(keys)} make_batch gives"
        )
    names, _ = _output_leaves(gm)  # the structure is export's `spec`
    captured = Captured(gm, "export", keys, spec, names)
    _check_same_as_model(model, captured, batch)
    _check_recordable(captured.output_spec)
    return captured


def _check_recordable(spec: pytree.TreeSpec) -> None:
    """The output's structure goes into pipeline.yaml for the last stage to rebuild: a type
    pytree cannot name (a namedtuple class of the model file's own) is refused with the fix."""
    try:
        pytree.treespec_dumps(spec)
    except NotImplementedError as err:
        raise VpipeError(
            f"the model's output structure cannot be recorded for the last stage "
            f"({str(err).split(' because')[0]}); return a tuple or a dict instead"
        ) from None


def _by_fx(model: nn.Module, leaves: Sequence[str]) -> Captured:
    tracer = _LeafTracer(frozenset(leaves))
    try:
        graph = tracer.trace(model)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if tracer.failed_in is None or not tracer.failed_in[0]:
            raise VpipeError(f"torch.fx cannot trace the model's own forward ({reason})") from None
        path, cls = tracer.failed_in
        raise VpipeError(
            f"torch.fx cannot trace {path!r} ({cls}): {reason}; profile it whole with --leaf {cls}"
        ) from None
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    names, spec = _output_leaves(gm)
    return Captured(gm, "fx", tuple(str(i) for i in range(len(placeholders))), spec, names)


def _output_leaves(gm: fx.GraphModule) -> tuple[tuple[str, ...], pytree.TreeSpec]:
    """The names of the nodes the graph returns, flattened, and the output's structure."""
    leaves, spec = pytree.tree_flatten(gm.graph.output_node().args[0])
    nodes = [n for n in leaves if isinstance(n, fx.Node)]
    if len(nodes) != len(leaves):
        raise VpipeError("the model returns a constant beside its tensors; return tensors only")
    return tuple(n.name for n in nodes), spec


def _check_same_as_model(model: nn.Module, captured: Captured, batch: Batch) -> None:
    """Run the model and the captured graph on the batch from one random state (dropout draws
    alike) and compare every output tensor; the model's buffers are put back afterwards. The
    graph must take exactly the batch's inputs (fx gives a defaulted argument a placeholder of
    its own) and give one output node per tensor (an fx node whose value is a tuple is not)."""
    placeholders = [n for n in captured.graph.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != len(batch.inputs):
        raise VpipeError(
            f"the {captured.route} graph takes {len(placeholders)} inputs; make_batch gives "
            f"{len(batch.inputs)}"
        )
    saved = {name: b.clone() for name, b in model.named_buffers()}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(0)
        expected = pytree.tree_leaves(batch.call(model))
        torch.manual_seed(0)
        got = pytree.tree_leaves(captured.graph(*(t for _, t in batch.inputs)))
    with torch.no_grad():
        for name, b in model.named_buffers():
            b.copy_(saved[name])
    if not len(expected) == len(got) == len(captured.output_leaves):
        raise VpipeError(
            f"the model returns {len(expected)} values, the {captured.route} graph "
            f"{len(got)} from {len(captured.output_leaves)} output nodes"
        )
    for i, (want, have) in enumerate(zip(expected, got, strict=True)):
        if not (isinstance(want, torch.Tensor) and torch.equal(want, have)):
            raise VpipeError(
                f"the {captured.route} graph's output {i} differs from the model's own "
                "forward; keep the submodule that differs whole with --leaf <its class>"
            )


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors inside a node's value: a tensor, or any structure pytree knows (tuples,
    lists, dicts, Hugging Face ModelOutputs)."""
    return [t for t in pytree.tree_leaves(value) if isinstance(t, torch.Tensor)]
