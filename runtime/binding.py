"""Running a stage's module on tensors it does not own: weight stashing runs each forward on one
weight version, and a backward's recompute on the version its forward used.

`torch.func.functional_call` does this for any module, checking ties and names on every call:
on a CPU about 20 µs per tensor, 0.4-0.6 ms a forward for a ResNet stage of 32 weights and
buffers, time the planner does not count. A stage's structure never changes, so `Slots` finds
once where each tensor lives (tied names included) and a call is one dict store per slot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class _Slot:
    table: dict[str, torch.Tensor | None]  # the owning module's _parameters or _buffers
    leaf: str
    name: str  # the tensor's name in the mappings `bind` takes (tied aliases share one)
    buffer: bool


class Slots:
    """Where `module`'s parameters and buffers live, by the names `named_parameters()` and
    `named_buffers()` give them (a tied parameter's first name)."""

    def __init__(self, module: nn.Module) -> None:
        slots = []
        for kind in ("_parameters", "_buffers"):
            first: dict[int, str] = {}  # tensor id -> the name it is bound by
            for owner_name, owner in module.named_modules(remove_duplicate=False):
                table = getattr(owner, kind)
                for leaf, tensor in table.items():
                    if tensor is None:
                        continue
                    name = first.setdefault(id(tensor), f"{owner_name}.{leaf}".lstrip("."))
                    slots.append(_Slot(table, leaf, name, kind == "_buffers"))
        self._slots = tuple(slots)

    @contextlib.contextmanager
    def bound(self, *tensors: MutableMapping[str, torch.Tensor]) -> Iterator[None]:
        """Point every slot at its tensor in `tensors` (a later mapping wins) while the block
        runs; then put back what was there. A buffer the block replaced (`self.mean = ...`, not
        in place) goes back into the mapping it came from, as it would stay on a module."""
        merged: dict[str, torch.Tensor] = {}
        source: dict[str, MutableMapping[str, torch.Tensor]] = {}
        for mapping in tensors:
            merged.update(mapping)
            source.update(dict.fromkeys(mapping, mapping))
        saved = [slot.table[slot.leaf] for slot in self._slots]
        try:
            for slot in self._slots:
                slot.table[slot.leaf] = merged[slot.name]
            yield
        finally:
            for slot, tensor in zip(self._slots, saved, strict=True):
                now = slot.table[slot.leaf]
                if slot.buffer and now is not None and now is not merged[slot.name]:
                    source[slot.name][slot.name] = now
                slot.table[slot.leaf] = tensor
