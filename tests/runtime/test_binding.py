"""Slots bind a module to outside tensors as functional_call does, tied names included."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from vpipe.runtime.binding import Slots


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.BatchNorm1d(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(tokens)))


def _version(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(p.shape, generator=generator).requires_grad_()
        for name, p in module.named_parameters()
    }


def test_bound_module_computes_what_functional_call_does() -> None:
    module = Tied()
    weights = _version(module, 1)
    assert set(weights) == {"embed.weight", "norm.weight", "norm.bias"}  # head ties to embed
    tokens = torch.tensor([1, 2, 3, 4])
    ours = {n: b.clone() for n, b in module.named_buffers()}
    theirs = {n: b.clone() for n, b in module.named_buffers()}
    with Slots(module).bound(weights, ours):
        out = module(tokens)
    expected = functional_call(module, {**weights, **theirs}, (tokens,))
    torch.testing.assert_close(out, expected)
    for name in ours:  # the running statistics went to the bound buffers
        torch.testing.assert_close(ours[name], theirs[name])
    assert ours["norm.num_batches_tracked"].item() == 1
    grads = torch.autograd.grad(out.sum(), list(weights.values()))
    expected_grads = torch.autograd.grad(expected.sum(), list(weights.values()))
    for ours_grad, their_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(ours_grad, their_grad)


def test_binding_puts_back_what_was_there() -> None:
    module = Tied()
    before = {n: t for n, t in [*module.named_parameters(), *module.named_buffers()]}
    buffers = {n: b.clone() for n, b in module.named_buffers()}
    with Slots(module).bound(_version(module, 2), buffers):
        assert module.head.weight is module.embed.weight is not before["embed.weight"]
    after = {n: t for n, t in [*module.named_parameters(), *module.named_buffers()]}
    assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
    assert module.head.weight is module.embed.weight


class Averaging(nn.Module):
    """Keeps a running mean by replacing its buffer (not in place), as some modules do."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.mean = 0.9 * self.mean + 0.1 * x.mean(0)
        return x - self.mean


def test_a_replaced_buffer_goes_back_to_its_mapping() -> None:
    plain, bound = Averaging(), Averaging()
    buffers = {"mean": torch.zeros(3)}
    slots = Slots(bound)
    for step in range(3):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(step))
        with slots.bound({}, buffers):
            out = bound(x)
        torch.testing.assert_close(out, plain(x))
    torch.testing.assert_close(buffers["mean"], plain.mean)
    assert not bound.mean.any()  # the module's own tensor is put back untouched
