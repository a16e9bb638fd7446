"""Capture a model torch.fx cannot trace through non-strict `torch.export`, at layer granularity.

`torch.export.export(strict=False)` runs the model's own Python (decorators, `**kwargs`, shape
branches, Hugging Face's mask builders) on fake tensors, so it captures what fx's proxies cannot.
Its graph is hundreds of ATen ops, too fine for a planner and unreadable as a stage file. So the
model's *layers* are kept whole: every submodule that is a `torch.nn` built-in, a `--leaf`
class, or holds no container of repeated layers (a `ModuleList`'s items: the transformer
blocks) has its call signature preserved by export, and each of its calls becomes one
`call_module` node that runs the original submodule. Only the model's own glue between layers
(masks, position ids, reshapes) stays as ATen ops. The result is an fx graph of the same shape
the fx route produces, with the model's own module names, so nothing downstream knows which
route ran.

Shapes are specialised to the example batch: the pipeline runs the profiled micro-batch size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import operator
import traceback
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import fx, nn
from torch.export import ExportedProgram
from torch.export.graph_signature import OutputKind
from torch.utils import _pytree as pytree

from vpipe.common.errors import VpipeError

_CONTAINERS = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
# ops export records only to check its own assumptions: no value, nothing to run
_ASSERTIONS = frozenset(
    {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range_for_size"}
)


def export_graph(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    leaves: Sequence[str],
) -> tuple[fx.GraphModule, pytree.TreeSpec]:
    """The model as an fx graph of its layers and the spec of its output over the graph's
    flat outputs. Raises VpipeError naming where export failed."""
    called = _called_modules(_export(model, args, kwargs, ()))
    layers = whole_layers(model, called, frozenset(leaves))
    program = _export(model, args, kwargs, layers)
    graph = _layer_graph(program, set(layers))
    gm = fx.GraphModule(model, graph, type(model).__name__)
    gm.graph.eliminate_dead_code()  # accessors of outputs no one reads
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm, program.call_spec.out_spec


def whole_layers(model: nn.Module, called: set[str], leaves: frozenset[str]) -> tuple[str, ...]:
    """The outermost called submodules to keep whole (see the module docstring)."""
    kept: list[str] = []

    def visit(module: nn.Module, path: str) -> None:
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            if (
                not isinstance(child, _CONTAINERS)
                and child_path in called
                and _whole(child, leaves)
            ):
                kept.append(child_path)
            else:
                visit(child, child_path)

    visit(model, "")
    return tuple(kept)


def _whole(module: nn.Module, leaves: frozenset[str]) -> bool:
    if type(module).__name__ in leaves or type(module).__module__.startswith("torch.nn"):
        return True
    return not any(isinstance(m, _CONTAINERS) for m in module.modules())


def _export(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], preserve: Sequence[str]
) -> ExportedProgram:
    try:
        with _quiet():
            return torch.export.export(
                model, args, kwargs, strict=False, preserve_module_call_signature=tuple(preserve)
            )
    except Exception as err:
        raise VpipeError(
            f"torch.export cannot capture the model: {describe_failure(err)}"
        ) from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Export prints the partial graph and logs warnings on stderr when it fails; the one-line
    error says what matters."""
    shapes = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    level = shapes.level
    shapes.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        shapes.setLevel(level)


def describe_failure(err: BaseException) -> str:
    """The error's first sentence (past any graph it prints) and the innermost frame of the
    user's code (not torch's), with what to try for a branch on a tensor's values."""
    lines = [line.strip() for line in str(err).splitlines()]
    prose = [line for line in lines if line and not _code_line(line)]
    reason = f"{type(err).__name__}: {prose[0] if prose else ''}"
    if "data-dependent" in reason:
        reason += (
            " (a branch on a tensor's values: move it into a submodule and pass --leaf "
            "<its class>, or write it with torch.where)"
        )
    frames = [
        f
        for f in traceback.extract_tb(err.__traceback__)
        if "/torch/" not in f.filename and "vpipe" not in f.filename
    ]
    return f"{reason} (at {frames[-1].filename}:{frames[-1].lineno})" if frames else reason


def _code_line(line: str) -> bool:
    return line.startswith(("def ", "#", "File ")) or "torch.ops." in line or line.endswith(":")


def _called_modules(program: ExportedProgram) -> set[str]:
    """The qualified names under which submodules were called."""
    return {
        path
        for node in program.graph.nodes
        for path, _ in (node.meta.get("nn_module_stack") or {}).values()
    }


def _layer_graph(program: ExportedProgram, layers: set[str]) -> fx.Graph:
    """ATen glue plus one call_module node per call of a kept layer."""
    signature = program.graph_signature
    attrs = {
        **signature.inputs_to_parameters,
        **signature.inputs_to_buffers,
        **signature.inputs_to_lifted_tensor_constants,
    }
    if signature.inputs_to_lifted_tensor_constants:
        names = ", ".join(signature.inputs_to_lifted_tensor_constants.values())
        raise VpipeError(
            f"the model keeps tensors that are neither parameters nor buffers ({names}); "
            "register them with self.register_buffer so stages can hold them"
        )
    calls = _calls(program, layers)
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder":
            if node.name in attrs:
                continue  # made where first used, so a stage takes only what it uses
            env[node.name] = graph.placeholder(node.name)
            continue
        if node.op == "output":
            continue
        call = calls.get(node.name)
        if call is not None:
            _emit_call(graph, env, call, attrs)
            continue
        if _inside_layer(node, layers):
            continue
        if getattr(node.target, "__name__", "").split(".")[0] in _ASSERTIONS:
            continue
        for source in node.all_input_nodes:
            if source.name not in env:
                _bind_input(graph, env, source, attrs)
        copy = graph.node_copy(node, lambda n: env[n.name])
        copy.args, copy.kwargs = _index_free((copy.args, copy.kwargs))
        env[node.name] = copy
    user = [
        spec.arg.name
        for spec in signature.output_specs
        if spec.kind == OutputKind.USER_OUTPUT and hasattr(spec.arg, "name")
    ]
    others = [s for s in signature.output_specs if s.kind not in (OutputKind.USER_OUTPUT,)]
    stray = [s.target for s in others if not any(_under(str(s.target), p) for p in layers)]
    if stray:
        raise VpipeError(
            f"the model's forward changes state outside its layers ({', '.join(map(str, stray))}); "
            "move that update into a submodule and pass --leaf <its class>"
        )
    graph.output(tuple(env[name] for name in user))
    return graph


def _index_free(arguments: Any) -> Any:
    """Arguments with each device made index-free (`cuda:0` -> `cuda`): export records the
    device it ran on, and each stage must make its tensors on its own (the runtime sets every
    rank's current CUDA device)."""

    def strip(value: Any) -> Any:
        return torch.device(value.type) if isinstance(value, torch.device) else value

    return pytree.tree_map(strip, arguments)


def _under(name: str, path: str) -> bool:
    return name == path or name.startswith(f"{path}.")


def _inside_layer(node: fx.Node, layers: set[str]) -> bool:
    return any(path in layers for path, _ in (node.meta.get("nn_module_stack") or {}).values())


def _bind_input(graph: fx.Graph, env: dict[str, fx.Node], source: fx.Node, attrs: dict) -> None:
    """A value read outside every layer: a parameter or buffer (get_attr by its name)."""
    if source.name in attrs:
        env[source.name] = graph.get_attr(attrs[source.name])
        return
    raise VpipeError(f"internal: {source.name} is read before it is made")  # a vpipe bug


class _Call:
    """One call of a kept layer: where it starts, its flat inputs and outputs, their specs."""

    def __init__(self, path: str, entry: Any) -> None:
        self.path = path
        self.inputs = entry.signature.inputs
        self.outputs = entry.signature.outputs
        self.in_spec = entry.signature.in_spec
        self.out_spec = entry.signature.out_spec


def _calls(program: ExportedProgram, layers: set[str]) -> dict[str, _Call]:
    """Each kept layer's calls, keyed by the first graph node inside the call."""
    entries: dict[str, list[Any]] = {}
    for entry in program.module_call_graph:
        path = entry.fqn.split("@")[0]
        if path in layers and entry.signature is not None:
            entries.setdefault(path, []).append(entry)
    starts: dict[str, _Call] = {}
    current: str | None = None  # the nn_module_stack key of the call the last node was in
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        key = next((k for k, (path, _) in stack.items() if path in layers), None)
        if key is not None and key != current:
            path = stack[key][0]
            queue = entries.get(path)
            if not queue:
                raise VpipeError(f"torch.export kept no call signature for {path}; try --leaf")
            starts[node.name] = _Call(path, queue.pop(0))
        current = key
    unused = [path for path, queue in entries.items() if queue]
    if unused:
        raise VpipeError(f"torch.export's calls of {unused[0]} do not line up; try --leaf")
    return starts


def _emit_call(graph: fx.Graph, env: dict[str, fx.Node], call: _Call, attrs: dict) -> None:
    flat: list[Any] = []  # the call's arguments: nodes for tensors, constants as they are
    for argument in call.inputs:
        name = getattr(argument, "name", "")
        if name and type(argument).__name__ == "TensorArgument":
            if name not in env:
                env[name] = graph.get_attr(attrs[name])
            flat.append(env[name])
        else:
            flat.append(getattr(argument, "value", None))
    args, kwargs = pytree.tree_unflatten(flat, call.in_spec)
    result = graph.call_module(call.path, tuple(args), dict(kwargs))
    for argument, node in zip(
        call.outputs, _leaf_accessors(graph, result, call.out_spec), strict=True
    ):
        if hasattr(argument, "name"):
            env[argument.name] = node


def _leaf_accessors(graph: fx.Graph, value: fx.Node, spec: pytree.TreeSpec) -> list[fx.Node]:
    """Nodes that pick each leaf of `spec` out of `value` (item by item, key by key)."""
    if spec.is_leaf():
        return [value]
    context = spec.context
    keys = list(context) if isinstance(context, (list, tuple)) else list(range(spec.num_children))
    if not all(isinstance(k, str) for k in keys):
        keys = list(range(spec.num_children))
    nodes = []
    children = [spec.child(i) for i in range(spec.num_children)]
    for key, child in zip(keys, children, strict=True):
        nodes += _leaf_accessors(graph, graph.call_function(operator.getitem, (value, key)), child)
    return nodes
