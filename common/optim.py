"""Out-of-place optimizer updates: each step returns new weight tensors and leaves the old ones
untouched, so a stashed version that autograd saved for a pending backward is never modified
(the in-place swap PipeDream did is what current autograd rejects)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

OPTIMIZERS = ("sgd", "momentum", "adam")


@dataclass
class Updater:
    """SGD, SGD with momentum, or Adam, with torch.optim's formulas (tests compare with it)."""

    kind: str
    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    steps: int = 0

    def __post_init__(self) -> None:
        if self.kind not in OPTIMIZERS:
            raise ValueError(f"optimizer {self.kind!r}: use one of {', '.join(OPTIMIZERS)}")

    @torch.no_grad()
    def step(
        self, weights: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], in_place: bool
    ) -> dict[str, torch.Tensor]:
        """The weights after one step on `grads`; optimizer state advances in place. With
        `in_place` the step writes into `weights` (nothing else needs them: no second copy of
        the weights is ever alive); otherwise it makes new tensors and leaves `weights` to the
        backwards that still need them. Either way no temporary as large as a weight is made
        beyond what torch.optim makes (`add` with `alpha`, as torch.optim's SGD does)."""
        self.steps += 1
        new = {}
        for name, weight in weights.items():
            grad = grads[name]
            if self.weight_decay:
                grad = grad.add(weight, alpha=self.weight_decay)
            direction = self._direction(name, grad)
            if in_place:
                new[name] = weight.add_(direction, alpha=-self.lr)
            else:
                new[name] = torch.add(weight, direction, alpha=-self.lr)
        return new

    def _direction(self, name: str, grad: torch.Tensor) -> torch.Tensor:
        if self.kind == "sgd":
            return grad
        state = self.state.setdefault(name, {})
        if self.kind == "momentum":
            if "buffer" not in state:
                state["buffer"] = grad.clone()
            else:
                state["buffer"].mul_(self.momentum).add_(grad)
            return state["buffer"]
        beta1, beta2 = self.betas
        if "m" not in state:
            state["m"], state["v"] = torch.zeros_like(grad), torch.zeros_like(grad)
        state["m"].mul_(beta1).add_(grad, alpha=1 - beta1)
        state["v"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        m_hat = state["m"] / (1 - beta1**self.steps)
        v_hat = state["v"] / (1 - beta2**self.steps)
        return m_hat / (v_hat.sqrt() + self.eps)
