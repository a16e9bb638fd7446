"""Tied parameters: one tensor of the model held by several stages, kept equal by summing.

Each holder computes the gradient of its own use. Every copy then takes the same updates in the
same order, update i made from the SUM of all holders' gradients of micro-batch i (of step i
under 1f1b and gpipe), with optimizer state of its own that sees the same sums: the copies go
through identical versions.

- 1f1b, gpipe (`Summed`): the holders update together, once per step, so an all-reduce in a
  group of just those ranks sums the gradients before the update, as Megatron does for tied
  embeddings. With data-parallel replicas the group holds every replica of every holding stage,
  and the exchange follows the replicas' own sum (`runtime.replicas`), after which each replica
  of a stage holds the stage's whole gradient: replica 0 of each holder gives it, the others
  zeros. Each copy then receives the same sum, bit for bit, as a straight pipeline's holders
  compute (adding zeros is exact): the replicas stay identical and the run equals one process.
  Pairing replica i of one holder with replica i of another before the replicas' sum would need
  equal replica counts (a 2 x 1 pipeline has none to pair), and every replica giving 1/r of its
  stage's gradient would round differently from one process for r = 3.
- asp (`Staggered`): every stage updates after each of its backwards, and backward runs from
  the last stage to the first, so a later holder has its gradient of micro-batch i before the
  owner (the first stage holding the parameter) has its own. At its update i the owner receives
  the other holders' gradients of micro-batch i (point to point), adds them to its own in stage
  order, sends the sum back and applies it; holder h applies the same sum as update i of its
  copy just before its own update of micro-batch i + (h - owner) (`schedules.tied_delay` says
  why that delay), and its last updates once its schedule is done. Each stage's versions still
  stash what its forwards used, the copy included, so weight stashing stays exact on every
  stage.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from vpipe.codegen.schema import Pipeline, TiedParameter
from vpipe.common.optim import Updater
from vpipe.common.schedules import tied_delay
from vpipe.runtime.links import wait_for, wire_device

Weights = dict[str, torch.Tensor]
# the links use tags 0 and 1; tied parameter t sends gradients to its owner on FIRST_TAG + 2t
# and the sums back on the tag after
FIRST_TAG = 2


def tied_parameters(
    pipeline: Pipeline, stage: int, replica: int, schedule: str, updater: Updater
) -> Summed | Staggered:
    """What keeps this stage's tied copies equal under `schedule` (every rank makes one);
    `replica`: this process's place among the stage's replicas (asp has none: refused)."""
    if schedule == "asp":
        return Staggered(pipeline, stage, updater)
    return Summed(pipeline, stage, replica, updater)


class Summed:
    """1f1b and gpipe: an all-reduce of the holders' gradients before each update, every
    replica of each holder in it, replica 0 giving the stage's (see the module docstring)."""

    def __init__(self, pipeline: Pipeline, stage: int, replica: int, updater: Updater) -> None:
        self.updater, self.gives = updater, replica == 0
        self.mine: list[tuple[str, dist.ProcessGroup]] = []
        for tied in pipeline.tied:  # every rank creates every group, in the same order
            ranks = sorted(rank for s in tied.stages for rank in pipeline.stages[s].ranks)
            group = dist.new_group(ranks)
            if stage in tied.stages:
                self.mine.append((_held_name(pipeline, stage, tied), group))

    def sum(self, grads: Weights) -> None:
        """Add the other holders' gradients into `grads` (the step's, summed over the stage's
        replicas: this process's own), in place."""
        for name, group in self.mine:
            if not self.gives:
                grads[name].zero_()
            dist.all_reduce(grads[name], group=group)

    def step(self, weights: Weights, grads: Weights, in_place: bool) -> Weights:
        return self.updater.step(weights, grads, in_place=in_place)

    def finish(self, weights: Weights) -> Weights:
        return weights


@dataclass
class _Peer:
    """The other end of one tied parameter's exchange, and this end's sends to it."""

    rank: int
    delay: int  # the holder's updates of the copy trail the owner's by this many
    tag: int  # gradients to the owner; the sums come back on tag + 1
    sends: deque[list[dist.Work | None]] = field(default_factory=deque)


@dataclass
class _Copy:
    """A tied parameter as this stage holds it: as its owner (`holders`: the other stages
    holding it) or as a later holder (`owner`, and an updater of its own that counts the
    copy's updates, so a step-dependent rate or Adam's bias correction sees the owner's)."""

    name: str
    holders: list[_Peer]
    owner: _Peer | None = None
    updater: Updater | None = None


class Staggered:
    """asp: the owner sums and applies update i at its own update i; a later holder applies it
    `tied_delay` updates later (see the module docstring)."""

    def __init__(self, pipeline: Pipeline, stage: int, updater: Updater) -> None:
        self.updater, self.updates = updater, 0
        self.copies: list[_Copy] = []
        for t, tied in enumerate(pipeline.tied):
            if stage not in tied.stages:
                continue
            owner, tag = min(tied.stages), FIRST_TAG + 2 * t
            name = _held_name(pipeline, stage, tied)
            if stage == owner:
                others = [h for h in tied.stages if h != owner]
                self.copies.append(
                    _Copy(name, [_Peer(h, tied_delay(owner, h), tag) for h in others])
                )
            else:
                peer = _Peer(owner, tied_delay(owner, stage), tag)
                fresh = dataclasses.replace(updater, state={}, steps=0)
                self.copies.append(_Copy(name, [], peer, fresh))

    def step(self, weights: Weights, grads: Weights, in_place: bool) -> Weights:
        """The stage's update after one backward: its own weights on `grads`, each owned tied
        parameter on the holders' sum (sent on to them first), each held copy on the update the
        owner made `delay` updates ago (its own gradient goes to the owner)."""
        if not self.copies:  # most stages: the plain update, without the copies' bookkeeping
            self.updates += 1
            return self.updater.step(weights, grads, in_place=in_place)
        grads, copies = dict(grads), {}
        for copy in self.copies:
            if copy.owner is None:
                grads[copy.name] = self._sum(copy, grads[copy.name])
            else:
                copies[copy.name] = self._held_update(copy, weights[copy.name], in_place)
                _send(copy.owner, grads.pop(copy.name), copy.owner.tag)
        own = {n: w for n, w in weights.items() if n not in copies}
        updated = self.updater.step(own, grads, in_place=in_place)
        self.updates += 1
        return {n: copies[n] if n in copies else updated[n] for n in weights}

    def finish(self, weights: Weights) -> Weights:
        """After the stage's last action: a holder applies the updates still due to its copies
        (the last `delay`), and every send is waited for."""
        weights = dict(weights)
        for copy in self.copies:
            if copy.owner is not None:
                for _ in range(min(self.updates, copy.owner.delay)):
                    weights[copy.name] = self._next_update(copy, weights[copy.name], True)
            for peer in [*copy.holders, *([copy.owner] if copy.owner else [])]:
                while peer.sends:
                    wait_for(peer.sends.popleft(), peer.rank)
        return weights

    def _sum(self, copy: _Copy, grad: torch.Tensor) -> torch.Tensor:
        """The owner's gradient plus the other holders' of the same micro-batch, in stage order;
        sent to each of them before anything else, so that it travels while this stage
        updates."""
        total = grad
        for peer in copy.holders:
            theirs = torch.empty_like(grad, device=wire_device(grad.device))
            wait_for([dist.irecv(theirs, src=peer.rank, tag=peer.tag)], peer.rank)
            total = total + theirs.to(grad.device)
        for peer in copy.holders:
            _send(peer, total, peer.tag + 1)
        return total

    def _held_update(self, copy: _Copy, weight: torch.Tensor, in_place: bool) -> torch.Tensor:
        """A held copy at this stage's update: the owner's update `delay` back, once there is
        one. Until then the same values, in a tensor of its own unless updated in place: a
        version a micro-batch in flight holds must never share a tensor with a newer one that
        a later update may write into."""
        assert copy.owner is not None
        if self.updates >= copy.owner.delay:
            return self._next_update(copy, weight, in_place)
        return weight if in_place else weight.clone()

    def _next_update(self, copy: _Copy, weight: torch.Tensor, in_place: bool) -> torch.Tensor:
        """A held copy after the owner's next update: its sum received, then applied."""
        assert copy.owner is not None and copy.updater is not None
        total = torch.empty_like(weight, device=wire_device(weight.device))
        wait_for([dist.irecv(total, src=copy.owner.rank, tag=copy.owner.tag + 1)], copy.owner.rank)
        total = total.to(weight.device)
        # the owner summed our gradient of that micro-batch before sending: that send is done
        wait_for(copy.owner.sends.popleft(), copy.owner.rank)
        return copy.updater.step({copy.name: weight}, {copy.name: total}, in_place)[copy.name]


def _send(peer: _Peer, tensor: torch.Tensor, tag: int) -> None:
    """Send asynchronously, keeping at most `delay` sends to `peer` unconfirmed. The owner's
    sum i - delay is taken at the holder's update i, before the holder sends its gradient of
    micro-batch i, which the owner has received by now (its update i): the wait never depends
    on the holder's future. A holder waits on its gradient sends as the sums come back
    (`_next_update`), which keeps it at `delay` without waiting here."""
    while len(peer.sends) >= peer.delay:
        wait_for(peer.sends.popleft(), peer.rank)
    sent = tensor.detach().contiguous().to(wire_device(tensor.device))  # gloo: host memory
    peer.sends.append([dist.isend(sent, dst=peer.rank, tag=tag)])


def _held_name(pipeline: Pipeline, stage: int, tied: TiedParameter) -> str:
    """The name this stage knows the tied parameter by."""
    return next(n for n in tied.names if n in pipeline.stages[stage].parameters)
