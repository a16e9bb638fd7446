"""Which parts of the model a stage owns, and how a stage takes them without allocating the rest.

Generated stage files call `adopt`; the runtime and the tests call `build_stage`. The model is
built on the meta device (no memory), the stage takes its submodules, parameters and buffers by
their original names, and only then are those materialised and loaded, so a stage never holds
another stage's weights and its `state_dict` keys are the original model's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import fx, nn

from vpipe.common.errors import VpipeError


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


def adopt(stage: nn.Module, model: nn.Module, names: Iterable[str]) -> None:
    """Give `stage` the objects `model` holds under `names`, at the same dotted paths.

    Containers on the way get empty `nn.Module`s, so `blocks.3.attn` is reachable as
    `getattr(self.blocks, "3").attn` and its parameters keep their original names.
    """
    for name in names:
        *path, leaf = name.split(".")
        source, target = model, stage
        for part in path:
            source = getattr(source, part)
            if part not in target._modules:
                target.add_module(part, nn.Module())
            target = target._modules[part]
        value = getattr(source, leaf)
        if isinstance(value, nn.Module):
            target.add_module(leaf, value)
        elif isinstance(value, nn.Parameter):
            target.register_parameter(leaf, value)
        else:
            persistent = leaf not in source._non_persistent_buffers_set
            target.register_buffer(leaf, value, persistent=persistent)


def stage_tensors(stage: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of a stage by original name, non-persistent buffers included
    (a stage built on the meta device has no other source for them)."""
    return dict(stage.named_parameters()) | dict(stage.named_buffers())


def build_stage(
    stage_class: Callable[[nn.Module], nn.Module],
    build_model: Callable[[], nn.Module],
    weights: str | Path,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """Build one stage on `device` holding only its own parameters, loaded from `weights`."""
    with torch.device("meta"):
        model = build_model()
    stage = stage_class(model)
    del model
    stage.to_empty(device=device)
    saved = torch.load(weights, map_location=device, weights_only=True, mmap=True)
    mine = stage_tensors(stage)
    if set(saved) != set(mine):
        raise VpipeError(
            f"{weights} holds {sorted(set(saved) ^ set(mine))[:3]} that do not match the stage's "
            "parameters; regenerate with vpipe-gen"
        )
    with torch.no_grad():
        for name, tensor in mine.items():
            tensor.copy_(saved[name])
    return stage
