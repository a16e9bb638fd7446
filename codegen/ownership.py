"""Which parts of the model a stage owns: the submodules and attributes its nodes use."""

from __future__ import annotations

from collections.abc import Iterable

from torch import fx


def owned_names(gm: fx.GraphModule, nodes: Iterable[str]) -> tuple[str, ...]:
    """Qualified names of the submodules (call_module) and attributes (get_attr) `nodes` use."""
    wanted = set(nodes)
    names = {
        str(node.target)
        for node in gm.graph.nodes
        if node.name in wanted and node.op in ("call_module", "get_attr")
    }
    # a name inside another owned module is owned through it
    return tuple(
        sorted(n for n in names if not any(n.startswith(f"{m}.") for m in names if m != n))
    )
