"""Point-to-point traffic between neighbouring stages, with shapes from pipeline.yaml.

Activations go from stage k to k+1, gradients back from k+1 to k; each travels as one message
per tensor in the order pipeline.yaml lists them, and both ends walk the same schedule, so
messages pair up in order. Sends are asynchronous (overlapped with compute); a receive blocks
until its tensor is there. Only floating-point tensors carry gradients back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from vpipe.codegen.schema import Pipeline, TensorSpec

ACTIVATION, GRADIENT = 0, 1


def carries_gradient(spec: TensorSpec) -> bool:
    return getattr(torch, spec.dtype).is_floating_point


class Links:
    def __init__(self, pipeline: Pipeline, stage: int, device: torch.device) -> None:
        spec = pipeline.stages[stage]
        self.stage, self.last = stage, len(pipeline.stages) - 1
        self.device = device
        self.received = spec.inputs[len(spec.batch_inputs) :]  # from stage - 1
        self.sent = spec.outputs if stage < self.last else ()
        self.pending: list[dist.Work] = []

    def recv_activations(self) -> list[torch.Tensor]:
        return [self._recv(spec, self.stage - 1, ACTIVATION) for spec in self.received]

    def send_activations(self, tensors: Sequence[torch.Tensor]) -> None:
        for tensor in tensors:
            self._send(tensor, self.stage + 1, ACTIVATION)

    def recv_gradients(self) -> list[torch.Tensor]:
        return [
            self._recv(spec, self.stage + 1, GRADIENT)
            for spec in self.sent
            if carries_gradient(spec)
        ]

    def send_gradients(self, tensors: Sequence[torch.Tensor]) -> None:
        for tensor in tensors:
            self._send(tensor, self.stage - 1, GRADIENT)

    def flush(self) -> None:
        """Wait for every send to finish (before exit, or before reusing a buffer)."""
        for work in self.pending:
            work.wait()
        self.pending.clear()

    def _send(self, tensor: torch.Tensor, peer: int, tag: int) -> None:
        self.pending = [w for w in self.pending if not w.is_completed()]
        self.pending.append(dist.isend(tensor.detach().contiguous(), dst=peer, tag=tag))

    def _recv(self, spec: TensorSpec, peer: int, tag: int) -> torch.Tensor:
        buffer = torch.empty(spec.shape, dtype=getattr(torch, spec.dtype), device=self.device)
        dist.recv(buffer, src=peer, tag=tag)
        return buffer
