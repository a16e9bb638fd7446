"""The runtime's updates follow torch.optim's formulas, in place or into new tensors."""

import pytest
import torch

from vpipe.common.optim import Updater

REFERENCE = {
    "sgd": lambda params, decay: torch.optim.SGD(params, lr=0.1, weight_decay=decay),
    "momentum": lambda params, decay: torch.optim.SGD(
        params, lr=0.1, momentum=0.9, weight_decay=decay
    ),
    "adam": lambda params, decay: torch.optim.Adam(params, lr=0.1, weight_decay=decay),
}


@pytest.mark.parametrize("in_place", [True, False])
@pytest.mark.parametrize("decay", [0.0, 0.01])
@pytest.mark.parametrize("kind", list(REFERENCE))
def test_updates_match_torch_optim(kind, decay, in_place):
    torch.manual_seed(0)
    start = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    grads = [{n: torch.randn_like(t) for n, t in start.items()} for _ in range(5)]
    reference = {n: t.clone().requires_grad_() for n, t in start.items()}
    optimizer = REFERENCE[kind](list(reference.values()), decay)
    updater = Updater(kind, 0.1, momentum=0.9, weight_decay=decay)
    weights = {n: t.clone() for n, t in start.items()}
    for step in grads:
        for name, tensor in reference.items():
            tensor.grad = step[name].clone()
        optimizer.step()
        before = {n: t.clone() for n, t in weights.items()}
        new = updater.step(weights, step, in_place=in_place)
        for name in weights:
            assert (new[name] is weights[name]) == in_place
            if not in_place:  # the old version is left for the backwards that need it
                assert torch.equal(weights[name], before[name])
        weights = new
    for name, tensor in reference.items():
        if kind == "adam":  # torch folds the bias corrections differently: not bitwise
            torch.testing.assert_close(weights[name], tensor.detach(), rtol=1e-6, atol=1e-7)
        else:
            assert torch.equal(weights[name], tensor.detach()), name
