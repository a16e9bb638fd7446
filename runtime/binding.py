"""Running a stage's module on tensors it does not own: weight stashing runs each forward on one
weight version, and a backward's recompute on the version its forward used.

`torch.func.functional_call` does this for any module, checking ties and names on every call:
on a CPU about 20 µs per tensor, 0.4-0.6 ms a forward for a ResNet stage of 32 weights and
buffers, time the planner does not count. A stage's structure never changes, so `Slots` finds
once where each tensor lives (tied names included) and a call is one dict store per slot.
"""

from __future__ import annotations

from collections.abc import MutableMapping
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

    def bound(self, *tensors: MutableMapping[str, torch.Tensor]) -> _Bound:
        """Point every slot at its tensor in `tensors` (a later mapping wins) while the block
        runs; then put back what was there. A buffer the block replaced (`self.mean = ...`, not
        in place) goes back into the mapping it came from, as it would stay on a module."""
        return _Bound(self._slots, tensors)


class _Bound:
    """`Slots.bound`'s block: a class rather than a generator, as it runs twice per micro-batch
    (forward, and a backward's recompute)."""

    def __init__(
        self, slots: tuple[_Slot, ...], tensors: tuple[MutableMapping[str, torch.Tensor], ...]
    ) -> None:
        self.slots, self.tensors = slots, tensors
        self.merged: dict[str, torch.Tensor] = {}
        self.saved: list[torch.Tensor | None] = []

    def __enter__(self) -> None:
        for mapping in self.tensors:
            self.merged.update(mapping)
        self.saved = [slot.table[slot.leaf] for slot in self.slots]
        try:
            for slot in self.slots:
                slot.table[slot.leaf] = self.merged[slot.name]
        except BaseException:  # a name missing from every mapping: leave the module as it was
            for slot, tensor in zip(self.slots, self.saved, strict=True):
                slot.table[slot.leaf] = tensor
            raise

    def __exit__(self, *exc: object) -> None:
        for slot, tensor in zip(self.slots, self.saved, strict=True):
            if slot.buffer:
                self._keep_replaced(slot)
            slot.table[slot.leaf] = tensor

    def _keep_replaced(self, slot: _Slot) -> None:
        """A buffer the block replaced goes to the last mapping that holds its name."""
        now = slot.table[slot.leaf]
        if now is not None and now is not self.merged[slot.name]:
            source = next(m for m in reversed(self.tensors) if slot.name in m)
            source[slot.name] = now
