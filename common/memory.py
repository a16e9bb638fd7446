"""Peak memory of a stage's tensors on the CPU, where PyTorch keeps no allocator statistics.

`LiveBytes` is a dispatch mode: every tensor an op returns is counted by its storage (views and
in-place results share their storage's count) until the last Python or autograd reference to it
goes, and the peak of the running total is kept. That is what `torch.cuda.max_memory_allocated`
reports on a GPU, less the caching allocator's rounding to 512-byte blocks. It costs a Python
call per op, so it is for measuring runs (`vpipe-train --measure-memory`), not for training.
A storage is counted while a tensor the meter saw uses it: one kept alive only through tensors
made before the meter started (and not given to it) goes uncounted.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveBytes(TorchDispatchMode):
    def __init__(self, existing: Iterable[torch.Tensor] = ()) -> None:
        """`existing`: tensors alive before the mode starts (weights, buffers), counted too."""
        super().__init__()
        self.bytes: dict[int, int] = {}  # storage address -> its size
        self.holders: dict[int, int] = {}  # storage address -> counted tensors using it
        self.current = self.peak = 0
        for tensor in existing:
            self._count(tensor)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        # a view or an in-place result shares an input's storage: no new memory. Counted only
        # if that storage is (to keep it alive in the count), not if it predates the meter
        inputs = {_address(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                address = _address(leaf)
                if address not in inputs or address in self.bytes:
                    self._count(leaf)
        return out

    def _count(self, tensor: torch.Tensor) -> None:
        if tensor.device.type == "meta" or tensor.layout != torch.strided:
            return  # sparse tensors have no one storage to count (their parts are counted)
        storage = tensor.untyped_storage()
        address = storage.data_ptr()
        if address == 0:  # no elements
            return
        if address not in self.bytes:
            self.bytes[address] = storage.nbytes()
            self.current += self.bytes[address]
            self.peak = max(self.peak, self.current)
        self.holders[address] = self.holders.get(address, 0) + 1
        weakref.finalize(tensor, self._release, address)

    def _release(self, address: int) -> None:
        self.holders[address] -= 1
        if not self.holders[address]:
            del self.holders[address]
            self.current -= self.bytes.pop(address)


def _address(tensor: torch.Tensor) -> int:
    if tensor.device.type == "meta" or tensor.layout != torch.strided:
        return 0
    return tensor.untyped_storage().data_ptr()
