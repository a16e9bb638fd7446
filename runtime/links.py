"""Point-to-point traffic between neighbouring stages, with shapes from pipeline.yaml.

Activations go from stage k to k+1, gradients back from k+1 to k; each travels as one message
per tensor in the order pipeline.yaml lists them, and both ends walk the same schedule, so
messages pair up in order. Where a stage has replicas, micro-batch m's messages go between
stage k's replica m mod r_k and stage k+1's replica m mod r_(k+1) (`runtime.placement`): each
pair of processes still exchanges its micro-batches in increasing order. Sends are
asynchronous (overlapped with compute), and each receive is posted one micro-batch ahead, so a
message's latency overlaps the compute before it is needed (gloo's small-message latency is a
millisecond or more). Only floating-point tensors carry gradients back.

On a GPU the messages travel over NCCL from GPU memory; where stages share a GPU (gloo, see
`runtime.launch._join_group`) through host memory, since gloo sends and receives CPU tensors
only. NCCL's waits order the GPU's stream but do not block the process: a stage on NCCL
synchronizes its stream after each wait, so that time blocked on a neighbour is counted as
waiting, not as compute (`runtime.events`).

Under gloo, activations and gradients travel in process groups of their own (`Channels`): two
sockets per pair of neighbours, each with its own gloo thread. A gloo send to one rank is a
rendezvous (the sender announces, the receiver answers that its buffer is posted, then the data
goes), and gloo's thread skips a socket whose lock the stage's main thread holds, polling it
again at once: with both directions on one socket, the main thread sending activations made the
thread spin on the gradients arriving beside them. Split, that thread took 22-28% of a core per
process instead of 35-50% on the bundled MLP, and pipelines ran 4-25% faster (docs/runtime.md,
Communication).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from vpipe.codegen.schema import Pipeline, TensorSpec
from vpipe.common.buffering import RECEIVES_AHEAD, SENDS_AHEAD
from vpipe.runtime.failures import LostPeer, first_line
from vpipe.runtime.placement import Placement, placements

ACTIVATION, GRADIENT = 0, 1
# each plan a run switches to (`runtime.switching`) gets tags of its own: a receive the links of
# the plan before posted ahead can then never take the next plan's messages (gloo cannot cancel
# a posted receive, and one of another size aborts the process); tag 2 carries the switch itself
TAGS_PER_PLAN = 3
# SENDS_AHEAD: older sends are waited for; they finished long ago (the peer posts receives
# ahead), and waiting two micro-batches behind can never wait on the peer's future (Links._send)


@dataclass(frozen=True)
class Channels:
    """The process groups activations and gradients travel in (None: the default group)."""

    activations: dist.ProcessGroup | None = None
    gradients: dist.ProcessGroup | None = None

    @classmethod
    def made(cls, timeout: timedelta) -> Channels:
        """Under gloo, a group per direction over every rank, waiting at most `timeout` for a
        peer (new_group is collective: every rank makes them, at the same point among its other
        groups); under NCCL the default group, whose sends go through no polling thread."""
        if dist.get_backend() != "gloo" or dist.get_world_size() < 2:
            return cls()
        ranks = list(range(dist.get_world_size()))
        return cls(*(dist.new_group(ranks, timeout=timeout) for _ in range(2)))


def carries_gradient(spec: TensorSpec) -> bool:
    return getattr(torch, spec.dtype).is_floating_point


def wire_device(device: torch.device) -> torch.device:
    """Where a message to or from a stage on `device` lies while it travels: that device, but
    host memory for a GPU under gloo (stages sharing a GPU), whose send and receive read and
    write a tensor's bytes as CPU memory."""
    if device.type != "cpu" and dist.get_backend() == "gloo":
        return torch.device("cpu")
    return device


def settler(device: torch.device) -> Callable[[], None] | None:
    """What to call after waiting on a message so that the process has waited for it too:
    under NCCL, wait() only makes the GPU's current stream wait; under gloo it blocks."""
    if device.type == "cuda" and dist.get_backend() == "nccl":
        return torch.cuda.current_stream(device).synchronize
    return None


class _Inbox:
    """Receives of one kind, posted ahead of use: one micro-batch's from each of `peers` (its
    sender's rank, in the order they are taken)."""

    def __init__(
        self,
        specs: Sequence[TensorSpec],
        peers: Iterator[int],
        tag: int,
        group: dist.ProcessGroup | None,
        names: Mapping[int, str],
        device: torch.device,
    ) -> None:
        self.specs, self.tag, self.group, self.names = specs, tag, group, names
        self.device = device
        self.peers = peers if specs else iter(())  # not yet posted
        self.wire = wire_device(device)  # where the receive buffers are
        self.settle = settler(device)
        self.layouts = [(tuple(s.shape), getattr(torch, s.dtype)) for s in specs]
        self.posted: deque[tuple[list[dist.Work | None], list[torch.Tensor], int]] = deque()
        self.waited_s = 0.0  # blocked in receives, for the run's event log

    def take(self) -> list[torch.Tensor]:
        self._post_ahead(1 + RECEIVES_AHEAD)
        works, buffers, peer = self.posted.popleft()
        start = time.perf_counter()
        wait_for(works, peer, self.names[peer])
        if self.settle:
            self.settle()
        self.waited_s += time.perf_counter() - start
        self._post_ahead(RECEIVES_AHEAD)
        if self.wire != self.device:  # received in host memory: onto the stage's GPU
            return [b.to(self.device) for b in buffers]
        return buffers

    def _post_ahead(self, depth: int) -> None:
        while len(self.posted) < depth:
            peer = next(self.peers, None)
            if peer is None:
                return
            buffers = [
                torch.empty(shape, dtype=dtype, device=self.wire) for shape, dtype in self.layouts
            ]
            with losing(peer, self.names[peer]):
                works = [dist.irecv(b, src=peer, tag=self.tag, group=self.group) for b in buffers]
            self.posted.append((works, buffers, peer))


class Links:
    def __init__(
        self,
        pipeline: Pipeline,
        placement: Placement,
        device: torch.device,
        microbatches: range,
        generation: int = 0,
        channels: Channels | None = None,
    ) -> None:
        """`microbatches`: the ones this process runs (every receive is posted ahead);
        `generation`: how many plans the run has switched to before this one; `channels`:
        the groups to send in (every plan's links share the run's)."""
        spec = pipeline.stages[placement.stage]
        self.placement = placement
        self.names = {p.rank: p.name for p in placements(pipeline)}  # for a lost peer's error
        received = spec.inputs[len(spec.batch_inputs) :] if placement.before else ()
        sent = spec.outputs if placement.after else ()
        senders = (placement.sender(m) for m in microbatches) if received else iter(())
        self.tags = (ACTIVATION + TAGS_PER_PLAN * generation, GRADIENT + TAGS_PER_PLAN * generation)
        self.channels = channels or Channels()
        self.activations = _Inbox(
            received,
            senders,
            self.tags[ACTIVATION],
            self.channels.activations,
            self.names,
            device,
        )
        receivers = (placement.receiver(m) for m in microbatches) if sent else iter(())
        self.gradients = _Inbox(
            [s for s in sent if carries_gradient(s)],
            receivers,
            self.tags[GRADIENT],
            self.channels.gradients,
            self.names,
            device,
        )
        self.pending: deque[tuple[list[dist.Work | None], int]] = deque()  # sends, and to whom
        self.send_waited_s = 0.0  # blocked until a neighbour took what was sent
        self.wire, self.settle = wire_device(device), settler(device)
        self.staged = self.wire != device  # sent from a copy in host memory

    def recv_activations(self) -> list[torch.Tensor]:
        return self.activations.take() if self.activations.specs else []

    def send_activations(self, tensors: Sequence[torch.Tensor], microbatch: int) -> None:
        receiver = self.placement.receiver(microbatch)
        self._send(tensors, receiver, self.tags[ACTIVATION], self.channels.activations)

    def recv_gradients(self) -> list[torch.Tensor]:
        return self.gradients.take() if self.gradients.specs else []

    def send_gradients(self, tensors: Sequence[torch.Tensor], microbatch: int) -> None:
        sender = self.placement.sender(microbatch)
        self._send(tensors, sender, self.tags[GRADIENT], self.channels.gradients)

    def waited_s(self) -> float:
        """Seconds spent blocked on a neighbour so far: in receives, and until a send was
        taken (a stage that waits for its peer is idle, not busy)."""
        return self.activations.waited_s + self.gradients.waited_s + self.send_waited_s

    def flush(self) -> None:
        """Wait for every send to finish (before exit)."""
        while self.pending:
            works, peer = self.pending.popleft()
            wait_for(works, peer, self.names[peer])
        if self.settle:
            self.settle()

    def _send(
        self,
        tensors: Sequence[torch.Tensor],
        peer: int,
        tag: int,
        group: dist.ProcessGroup | None,
    ) -> None:
        """One micro-batch's tensors, asynchronously; first wait on the sends SENDS_AHEAD
        micro-batches back, so that finished sends (and the tensors they hold) are let go.
        Such a send to stage s + 1 finished once s + 1 posted its receive, which it does on
        taking the activations before it; nothing stage s + 1 needs for that is still to come
        from this stage (and the same holds for gradients to s - 1). With replicas the peer is
        the replica that runs the micro-batch, and the receive it posts first waits only on
        earlier micro-batches: forwards go in increasing order, and the updates a replica
        joins before a forward of m sum micro-batches before m (`common.replicas`)."""
        start = time.perf_counter()
        waits = len(self.pending) >= SENDS_AHEAD
        while len(self.pending) >= SENDS_AHEAD:
            works, waited = self.pending.popleft()
            wait_for(works, waited, self.names[waited])
        if waits and self.settle:
            self.settle()
        self.send_waited_s += time.perf_counter() - start
        if self.staged:  # a copy in host memory, made before the send starts
            tensors = [t.detach().contiguous().to(self.wire) for t in tensors]
        with losing(peer, self.names[peer]):
            works = [
                dist.isend(t.detach().contiguous(), dst=peer, tag=tag, group=group) for t in tensors
            ]
        self.pending.append((works, peer))


def wait_for(works: Sequence[dist.Work | None], peer: int, name: str | None = None) -> None:
    """Wait for `works` (sends or receives with rank `peer`, `name` in messages: by default
    `stage <peer>`, as in a straight pipeline): a lost peer is a one-line error. torch gives
    None for a rank outside the group, which has nothing to wait for."""
    with losing(peer, name):
        for work in works:
            if work is not None:
                work.wait()


@contextlib.contextmanager
def losing(peer: int, name: str | None = None) -> Iterator[None]:
    """Turn the error of an exchange with rank `peer` (the peer died, or the group's timeout
    passed) into LostPeer naming it: also where posting a send or receive fails at once, as it
    does to a peer already gone."""
    try:
        yield
    except RuntimeError as err:
        raise LostPeer(f"lost {name or f'stage {peer}'}: {first_line(err)}") from None
