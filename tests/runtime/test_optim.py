"""The runtime's updates are torch.optim's, bitwise, in place or into new tensors, with the
learning rate a schedule gives each step."""

import pytest
import torch

from vpipe.common.optim import Updater
from vpipe.common.optimizers import OPTIMIZERS

REFERENCE = {
    "sgd": lambda params, decay: torch.optim.SGD(params, lr=0.1, weight_decay=decay),
    "momentum": lambda params, decay: torch.optim.SGD(
        params, lr=0.1, momentum=0.9, weight_decay=decay
    ),
    "adam": lambda params, decay: torch.optim.Adam(params, lr=0.1, weight_decay=decay),
    "adamw": lambda params, decay: torch.optim.AdamW(params, lr=0.1, weight_decay=decay),
}


def halving(update: int) -> float:
    return 0.5**update


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("decay", [0.0, 0.01])
@pytest.mark.parametrize("kind", list(REFERENCE))
def test_updates_match_torch_optim(kind, decay, in_place):
    torch.manual_seed(0)
    start = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    grads = [{n: torch.randn_like(t) for n, t in start.items()} for _ in range(5)]
    reference = {n: t.clone().requires_grad_() for n, t in start.items()}
    optimizer = REFERENCE[kind](list(reference.values()), decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, halving)
    updater = Updater(kind, 0.1, momentum=0.9, weight_decay=decay, lr_factor=halving)
    weights = {n: t.clone() for n, t in start.items()}
    for step in grads:
        for name, tensor in reference.items():
            tensor.grad = step[name].clone()
        optimizer.step()
        schedule.step()
        before = {n: t.clone() for n, t in weights.items()}
        given = {n: t.clone() for n, t in step.items()}
        new = updater.step(weights, step, in_place=in_place)
        for name in weights:
            assert (new[name] is weights[name]) == in_place
            if not in_place:  # the old version is left for the backwards that need it
                assert torch.equal(weights[name], before[name])
            assert torch.equal(step[name], given[name])  # gradients are only read
        weights = new
    for name, tensor in reference.items():
        assert torch.equal(weights[name], tensor.detach()), name


def test_every_optimizer_is_checked_against_torch_optim():
    """Each name the commands accept (common/optimizers.py) has an update rule, tested above."""
    assert tuple(REFERENCE) == OPTIMIZERS
