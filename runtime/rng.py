"""The random-number state a stage's results depend on: the CPU generator's and, with CUDA, the
current device's. Checkpoints save it, and so does each forward still in flight, so that a
resumed run draws the same dropout masks as an unbroken one."""

from __future__ import annotations

import torch

RngState = dict[str, torch.Tensor]


def get_state() -> RngState:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_initialized():  # implies available; and cheaper to ask, once per forward
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_state(state: RngState) -> None:
    """`state` may have been loaded onto a GPU with the rest of a checkpoint: the generators
    take their state from host memory."""
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu())
