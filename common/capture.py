"""Capture a model as a torch.fx graph at a granularity a planner can use.

`torch.nn` modules stay whole (fx's default), functional ops become nodes, and any submodule
class the user names with `--leaf` is kept whole too: that is how a model fx cannot trace
(data-dependent control flow) becomes traceable, and how attention blocks stay one node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from vpipe.common.errors import VpipeError


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


def capture(model: nn.Module, leaves: Sequence[str] = ()) -> fx.GraphModule:
    """Trace `model` into a GraphModule whose nodes are in topological order.

    Raises VpipeError naming the submodule and class that could not be traced, and the
    `--leaf` flag that fixes it.
    """
    classes = {type(m).__name__ for m in model.modules()}
    unknown = sorted(set(leaves) - classes)
    if unknown:
        raise VpipeError(
            f"--leaf {' '.join(unknown)}: no submodule of this model has that class; "
            f"its classes are {', '.join(sorted(classes))}"
        )
    tracer = _LeafTracer(frozenset(leaves))
    try:
        graph = tracer.trace(model)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if tracer.failed_in is None or not tracer.failed_in[0]:
            raise VpipeError(
                f"torch.fx cannot trace the model's own forward ({reason}); move the "
                "untraceable part into a submodule and pass --leaf <its class>"
            ) from None
        path, cls = tracer.failed_in
        raise VpipeError(
            f"torch.fx cannot trace {path!r} ({cls}): {reason}; profile it whole with --leaf {cls}"
        ) from None
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def flat_tensors(value: Any) -> list[torch.Tensor]:
    """The tensors inside a node's value (a tensor, or nested tuples, lists and dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in flat_tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in flat_tensors(v)]
    return []
