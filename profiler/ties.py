"""Parameters that several nodes of the captured graph use: tied weights (an embedding and an
output head sharing one matrix) and modules called more than once.

The profile charges such a parameter's bytes to its first user only (`profiling._state_owners`),
so the model's total is right; but a pipeline that puts another user on another stage holds a
second copy there, which the planner must count. This lists them, found by tensor identity.
"""

from __future__ import annotations

import torch
from torch import fx

from vpipe.profiler.schema import Tie


def find_ties(gm: fx.GraphModule) -> tuple[Tie, ...]:
    """Every parameter used by more than one node (call_module nodes through their submodule's
    parameters, get_attr nodes directly), with its users in graph order."""
    names: dict[int, list[str]] = {}
    for name, parameter in gm.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    by_name = dict(gm.named_parameters(remove_duplicate=False))
    users: dict[int, list[str]] = {}
    tensors: dict[int, torch.Tensor] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            used = list(gm.get_submodule(str(node.target)).parameters())
        elif node.op == "get_attr" and str(node.target) in by_name:
            used = [by_name[str(node.target)]]
        else:
            continue
        for parameter in used:
            tensors[id(parameter)] = parameter
            if node.name not in users.setdefault(id(parameter), []):
                users[id(parameter)].append(node.name)
    return tuple(
        Tie(
            names=tuple(names[key]),
            bytes=tensors[key].numel() * tensors[key].element_size(),
            trainable=tensors[key].requires_grad,
            users=tuple(nodes),
        )
        for key, nodes in users.items()
        if len(nodes) > 1
    )
