"""Data-parallel replicas of a stage, as data: which replica runs which micro-batch, each
replica's actions, when a stage's replicas update together, and the check that every process
can run to the end. Pure, like `common.schedules`, whose 1F1B and memory counts they reuse.

A stage with r replicas gives micro-batch m (numbered over the whole run) to replica m mod r,
so m's activations go from stage s's replica m mod r_s to stage s + 1's replica m mod r_(s+1),
and its gradients back the same way; neighbours may have different replica counts. A replica
runs 1F1B over its own micro-batches, holding at most ceil(w / r) in flight, w the processes
from its stage to the last (`schedules.replica_in_flight`, the planner's count; a straight
pipeline's stage s has w = S - s and runs exactly `schedules.stage_actions`). Under asp,
2 stages x 2 replicas (w = 4 and 2: 2 in flight on stage 0, 1 on stage 1):

    stage 0 replica 0:  F0 F2 B0 F4 B2 F6 B4 ...
    stage 0 replica 1:  F1 F3 B1 F5 B3 F7 B5 ...
    stage 1 replica 0:  F0 B0 F2 B2 F4 B4 ...
    stage 1 replica 1:  F1 B1 F3 B3 F5 B5 ...

A stage's replicas update together, each on the sum of all their gradients (an all-reduce),
so they stay identical. Under 1f1b and gpipe once per step, after each replica's last
micro-batch of the step (a step is the same M micro-batches whatever the replication); under
asp after every backward, PipeDream's rule: replica i's k-th backward (micro-batch k r + i) is
summed with the other replicas' k-th, so update k of the stage is micro-batches
k r .. k r + r - 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

from vpipe.common.schedules import (
    BACKWARD,
    FORWARD,
    Action,
    _one_f_one_b,
    peak_in_flight,
    replica_in_flight,
    resumed,
)


def replica_actions(
    name: str, microbatches: int, steps: int, replicas: int, workers_from_here: int, replica: int
) -> Iterator[Action]:
    """One replica's actions for a whole run, made as they are needed: 1F1B over its own
    micro-batches (every r-th from `replica`) with `replica_in_flight` of them at most (asp: one
    stream; 1f1b: per step, flushed; gpipe: per step, every forward first)."""
    if name == "asp":
        yield from refilled(steps, replicas, workers_from_here, replica, 0)
        return
    depth = replica_in_flight("asp", 1, replicas, workers_from_here)
    for step in range(steps):
        first = step * microbatches
        own = range(first + (replica - first) % replicas, first + microbatches, replicas)
        if name == "gpipe":
            yield from (Action(FORWARD, m) for m in own)
            yield from (Action(BACKWARD, m) for m in own)
        else:
            plan = _one_f_one_b(depth, len(own), 0)
            yield from (Action(a.kind, own[a.microbatch]) for a in plan)


def refilled(
    steps: int, replicas: int, workers_from_here: int, replica: int, first: int
) -> Iterator[Action]:
    """One replica's asp stream from micro-batch `first` (a multiple of `replicas`) on, with an
    empty pipeline there: warm-up, 1F1B, drain, as if the run began at `first`. From 0 it is
    the whole run; from later, the resume of a checkpoint taken while an earlier run drained,
    which holds none of the micro-batches an unbroken longer run would have in flight."""
    depth = replica_in_flight("asp", 1, replicas, workers_from_here)
    own = range(first + replica, steps, replicas)
    yield from (Action(a.kind, own[a.microbatch]) for a in _one_f_one_b(depth, len(own), 0))


def replica_resumed(
    actions: Iterable[Action], done: int, replicas: int, replica: int
) -> Iterator[Action]:
    """The replica's actions left once micro-batches 0 .. done - 1 have had their backward:
    everything after its backward of the last of them it runs (`schedules.resumed`, which the
    other replicas' last micro-batch would never match)."""
    own = range(replica, done, replicas)
    return resumed(actions, own[-1] + 1 if own else 0)


def asp_reach(replicas: Sequence[int]) -> int:
    """Under asp, how far past micro-batch n - 1 the forwards in flight reach once every stage
    has made the update that completes it: stage s's replicas then hold micro-batches
    n .. n + r_s (d_s - 1) - 1, d_s = `replica_in_flight` (S - 1 of them on stage 0 of a
    straight pipeline). A checkpoint after n from a run shorter than n + this was taken while
    that run drained."""
    return max(
        r * (replica_in_flight("asp", 1, r, sum(replicas[s:])) - 1) for s, r in enumerate(replicas)
    )


def closes_update(name: str, microbatches: int, replicas: int, microbatch: int) -> bool:
    """Whether the replica that runs `microbatch` joins its stage's update after its backward:
    after every backward under asp; under 1f1b and gpipe after its last micro-batch of the
    step (the next one it runs, r later, is in a later step)."""
    if name == "asp":
        return True
    return (microbatch + replicas) // microbatches != microbatch // microbatches


def update_microbatches(name: str, microbatches: int, replicas: int, microbatch: int) -> range:
    """The micro-batches whose gradients the update that `microbatch` takes part in sums: its
    step's under 1f1b and gpipe; under asp the k-th of every replica, k = microbatch // r."""
    per_update = replicas if name == "asp" else microbatches
    first = microbatch // per_update * per_update
    return range(first, first + per_update)


def run_lengths(name: str, replicas: Sequence[int]) -> int:
    """The run lengths (in steps) that give every replica the same number of updates are the
    multiples of this: under asp, the replica counts' least common multiple (a stage with r
    replicas updates once per r micro-batches); 1 under 1f1b and gpipe."""
    return math.lcm(*replicas) if name == "asp" else 1


def validate_replicas(name: str, replicas: Sequence[int], microbatches: int, steps: int) -> None:
    """Raise ValueError unless every stage's replicas run each micro-batch's forward then its
    backward exactly once, on the replica that owns it, no replica holds more in flight than
    `replica_in_flight`, and all the processes can run to the end: a forward needs the
    previous stage's forward of its micro-batch, a backward the next stage's backward, and a
    replica that joins an update waits there until every replica of its stage has joined it
    (the all-reduce). `replicas[s]`: stage s's replica count."""
    total = steps * (1 if name == "asp" else microbatches)
    plans: dict[tuple[int, int], list[Action]] = {}
    for s, count in enumerate(replicas):
        workers = sum(replicas[s:])
        for i in range(count):
            plan = list(replica_actions(name, microbatches, steps, count, workers, i))
            forwards = [a.microbatch for a in plan if a.kind == FORWARD]
            backwards = [a.microbatch for a in plan if a.kind == BACKWARD]
            if forwards != list(range(i, total, count)) or sorted(backwards) != forwards:
                raise ValueError(f"stage {s} replica {i}: it does not run its micro-batches once")
            limit = replica_in_flight(name, microbatches, count, workers)
            if peak_in_flight(plan) > limit:
                raise ValueError(
                    f"stage {s} replica {i}: {peak_in_flight(plan)} in flight, more than {limit}"
                )
            plans[s, i] = plan
    _simulate(name, replicas, microbatches, plans)


def _simulate(
    name: str,
    replicas: Sequence[int],
    microbatches: int,
    plans: dict[tuple[int, int], list[Action]],
) -> None:
    """Walk every process's actions as far as their dependencies allow; raise ValueError where
    they cannot go on."""
    last = len(replicas) - 1
    done: set[tuple[int, str, int]] = set()  # (stage, kind, micro-batch)
    joined: dict[tuple[int, int], int] = {}  # (stage, update's first micro-batch): replicas in
    waiting: dict[tuple[int, int], tuple[int, int] | None] = dict.fromkeys(plans)
    position = dict.fromkeys(plans, 0)
    while any(position[p] < len(plans[p]) or waiting[p] for p in plans):
        progressed = False
        for (s, i), plan in plans.items():
            while True:
                update = waiting[s, i]
                if update is not None:
                    if joined[update] < replicas[s]:
                        break
                    waiting[s, i] = None
                    progressed = True
                if position[s, i] == len(plan):
                    break
                action = plan[position[s, i]]
                m = action.microbatch
                if action.kind == FORWARD:
                    ready = s == 0 or (s - 1, FORWARD, m) in done
                else:
                    ready = (s, FORWARD, m) in done and (s == last or (s + 1, BACKWARD, m) in done)
                if not ready:
                    break
                done.add((s, action.kind, m))
                position[s, i] += 1
                progressed = True
                if action.kind == BACKWARD and closes_update(name, microbatches, replicas[s], m):
                    key = (s, update_microbatches(name, microbatches, replicas[s], m).start)
                    joined[key] = joined.get(key, 0) + 1
                    waiting[s, i] = key
        if not progressed:
            stuck = ", ".join(
                f"stage {s} replica {i} at "
                + (str(plans[s, i][position[s, i]]) if position[s, i] < len(plans[s, i]) else "")
                + (" (in its update)" if waiting[s, i] else "")
                for s, i in plans
                if position[s, i] < len(plans[s, i]) or waiting[s, i]
            )
            raise ValueError(f"the schedule cannot proceed: {stuck}")
