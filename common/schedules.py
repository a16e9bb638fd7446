"""Pipeline schedules as data: for each stage, the ordered forwards and backwards it runs.

Pure functions, shared by the planner's simulator and the runtime's executor, so the schedule
that is predicted is the schedule that runs. An action prints as `F3` (forward of micro-batch 3)
or `B1`. With S stages and M micro-batches (clock ticks across, stages down, S = 3, M = 4):

    1f1b   stage 0:  F0 F1 F2 B0 F3 B1    B2    B3
           stage 1:     F0 F1 B0 F2 B1 F3 B2 B3
           stage 2:        F0 B0 F1 B1 F2 B2 F3 B3
    gpipe  stage s:  F0 F1 F2 F3 B0 B1 B2 B3

1F1B (PipeDream-Flush, DAPPLE) runs S - 1 - s warm-up forwards on stage s, then alternates one
forward and one backward, then drains; GPipe runs every forward first. Both flush at the end of
the mini-batch, so gradients equal single-device training. The asynchronous schedule (`asp`)
is 1F1B without the flush: its steady state is the alternation, with S - s mini-batches in
flight on stage s.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

FORWARD, BACKWARD = "F", "B"


@dataclass(frozen=True)
class Action:
    kind: str  # F or B
    microbatch: int

    def __str__(self) -> str:
        return f"{self.kind}{self.microbatch}"


def one_f_one_b(stages: int, microbatches: int, stage: int) -> list[Action]:
    """PipeDream-Flush order for one stage: warm-up forwards, 1F1B alternation, drain."""
    return list(_one_f_one_b(stages, microbatches, stage))


def _one_f_one_b(stages: int, microbatches: int, stage: int) -> Iterator[Action]:
    warmup = min(stages - 1 - stage, microbatches)
    yield from (Action(FORWARD, i) for i in range(warmup))
    for i in range(microbatches - warmup):
        yield Action(FORWARD, warmup + i)
        yield Action(BACKWARD, i)
    yield from (Action(BACKWARD, i) for i in range(microbatches - warmup, microbatches))


def gpipe(stages: int, microbatches: int, stage: int) -> list[Action]:
    """GPipe order: every forward, then every backward."""
    del stages, stage  # the same on every stage
    return [Action(FORWARD, i) for i in range(microbatches)] + [
        Action(BACKWARD, i) for i in range(microbatches)
    ]


_FLUSHING = {"1f1b": one_f_one_b, "gpipe": gpipe}  # the synchronous schedules' orders
SCHEDULES = ("asp", *_FLUSHING)  # every schedule's name; asp is 1f1b without the flush


def schedule(name: str, stages: int, microbatches: int) -> list[list[Action]]:
    """The action list of every stage for one mini-batch of a synchronous schedule."""
    make = _FLUSHING[name]
    return [make(stages, microbatches, s) for s in range(stages)]


def peak_in_flight(actions: list[Action]) -> int:
    """Most micro-batches whose forward has run and whose backward has not, at once."""
    alive = peak = 0
    for action in actions:
        alive += 1 if action.kind == FORWARD else -1
        peak = max(peak, alive)
    return peak


def stage_actions(
    name: str, stages: int, microbatches: int, steps: int, stage: int
) -> Iterator[Action]:
    """One stage's actions for a whole run, micro-batches numbered globally from 0, made as
    they are needed (a run of a million steps holds no list of millions of actions).

    Synchronous schedules repeat their mini-batch `steps` times (a flush between steps; the
    optimizer steps after each step's last backward). `asp` is one 1F1B stream of
    `steps` micro-batches with no flush: each backward is followed by its own update.
    """
    if name == "asp":
        yield from _one_f_one_b(stages, steps, stage)
        return
    plan = _FLUSHING[name](stages, microbatches, stage)
    for step in range(steps):
        yield from (Action(a.kind, step * microbatches + a.microbatch) for a in plan)


def run_actions(name: str, stages: int, microbatches: int, steps: int) -> list[list[Action]]:
    """Every stage's actions for a whole run (see `stage_actions`), as lists."""
    return [list(stage_actions(name, stages, microbatches, steps, s)) for s in range(stages)]


def resumed(actions: Iterable[Action], done: int) -> Iterator[Action]:
    """The actions left once micro-batches 0 .. done - 1 have had their backward: everything
    after the backward of micro-batch done - 1 (all of `actions` when done is 0)."""
    actions = iter(actions)
    if done:
        for action in actions:
            if action == Action(BACKWARD, done - 1):
                break
    yield from actions


def in_flight_limit(name: str, stages: int, microbatches: int, stage: int) -> int:
    """Micro-batches stage `stage` may hold at once: what the planner's memory model counts."""
    return replica_in_flight(name, microbatches, 1, stages - stage)


def replica_in_flight(name: str, microbatches: int, replicas: int, workers_from_here: int) -> int:
    """Micro-batches one replica of a stage holds at once, when the stage has `replicas` and
    it and the stages after it have `workers_from_here` processes in all.

    The replicas take the micro-batches round-robin. In 1F1B's steady state every process from
    this stage to the last holds one micro-batch between its forward and backward, so a stage's
    replicas together hold `workers_from_here`, each 1/replicas of them (rounded up); PipeDream's
    hybrid pipeline admits as many into its input stage. A straight pipeline's stage s of S has
    one replica and S - s processes from it on. A synchronous step's M micro-batches are shared
    too: each replica runs ceil(M / replicas) of them."""
    depth = -(-workers_from_here // replicas)
    share = -(-microbatches // replicas)
    if name == "asp":
        return depth
    if name == "1f1b":
        return min(depth, share)
    return share


def updates_per_microbatch(name: str, microbatches: int) -> float:
    """Optimizer steps per micro-batch: asp updates after each backward, the synchronous
    schedules once per step of M micro-batches."""
    return 1.0 if name == "asp" else 1.0 / microbatches


def allreduces_per_microbatch(name: str, microbatches: int, replicas: int) -> float:
    """All-reduces of a replicated stage's gradients per micro-batch one replica runs: asp
    all-reduces after every backward (PipeDream's rule: the replicas' k-th backwards make one
    update), the synchronous schedules once per step, after each replica's M / r."""
    return 1.0 if name == "asp" else min(1.0, replicas / microbatches)


def weight_versions(name: str, stages: int, stage: int) -> int:
    """Weight versions stage `stage` keeps: under asp, weight stashing keeps the version each
    in-flight mini-batch's forward used (S - s of them); the synchronous schedules update only
    at the flush, so every micro-batch of a step uses the one version."""
    return replica_weight_versions(name, 1, stages - stage)


def replica_weight_versions(name: str, replicas: int, workers_from_here: int) -> int:
    """Weight versions one replica keeps (see `replica_in_flight`): one per micro-batch in
    flight under asp (its replicas update together, so each holds the same versions)."""
    return replica_in_flight(name, 1, replicas, workers_from_here) if name == "asp" else 1


def tied_delay(owner: int, holder: int) -> int:
    """Under asp, how many updates later than the owner (the first stage holding a tied
    parameter) stage `holder` applies each update of it: update i, made from micro-batch i's
    summed gradients, goes in just before holder's own update of micro-batch i + delay.

    holder - owner is the delay at which every micro-batch's forwards see one value of the
    parameter on every stage: stage s's forward of m follows its update m - (S - s), so the
    owner's follows tied update m - S + owner, and holder's forward, following its own update
    m - S + holder, has tied updates up to m - S + holder - delay: the same. The summed
    gradient is then micro-batch m's gradient for the value it used, as in one process. It
    never deadlocks (`validate` checks), and the holder waits for update i only when the
    owner's backward of i outlasts the forwards of stages owner + 1 .. holder plus holder's
    own backward: holder's backward of i + delay follows its forward of i + delay + S - 1 -
    holder, which follows the owner's forward just before the owner's backward of i."""
    return holder - owner


def _tie_ready(ties: Sequence[Sequence[int]], stage: int, i: int, done) -> bool:
    """Whether stage `stage`'s update after its backward of micro-batch i (asp) has the tied
    updates it applies: the owner's update i - delay of each tied parameter it holds."""
    for holders in ties:
        owner = min(holders)
        j = i - tied_delay(owner, stage) if stage in holders else -1
        if stage != owner and j >= 0 and (owner, BACKWARD, j) not in done:
            return False
    return True


def validate(
    name: str,
    actions: list[list[Action]],
    microbatches: int,
    ties: Sequence[Sequence[int]] = (),
) -> None:
    """Raise ValueError unless every stage runs each micro-batch's forward then its backward
    exactly once, holds no more in flight than `in_flight_limit`, and the stages together can
    run to the end (a forward needs the previous stage's forward of that micro-batch, a backward
    the next stage's backward, and under asp a backward's update the tied updates it applies,
    `ties` listing each tied parameter's stages): the check a schedule passes before any
    process starts. (Under 1f1b and gpipe the holders sum at the flush, which every holder
    reaches by its own backwards: nothing to check.)"""
    stages = len(actions)
    for s, plan in enumerate(actions):
        forwards = [a.microbatch for a in plan if a.kind == FORWARD]
        backwards = [a.microbatch for a in plan if a.kind == BACKWARD]
        if sorted(forwards) != sorted(backwards) or len(set(forwards)) != len(forwards):
            raise ValueError(f"stage {s}: forwards and backwards do not pair up one to one")
        limit = in_flight_limit(name, stages, microbatches, s)
        if peak_in_flight(plan) > limit:
            raise ValueError(f"stage {s}: {peak_in_flight(plan)} in flight, more than {limit}")
    done: set[tuple[int, str, int]] = set()
    position = [0] * stages
    while any(position[s] < len(actions[s]) for s in range(stages)):
        progressed = False
        for s in range(stages):
            while position[s] < len(actions[s]):
                action = actions[s][position[s]]
                i = action.microbatch
                if action.kind == FORWARD:
                    ready = s == 0 or (s - 1, FORWARD, i) in done
                else:
                    ready = (
                        (s, FORWARD, i) in done
                        and (s == stages - 1 or (s + 1, BACKWARD, i) in done)
                        and (name != "asp" or _tie_ready(ties, s, i, done))
                    )
                if not ready:
                    break
                done.add((s, action.kind, i))
                position[s] += 1
                progressed = True
        if not progressed:
            stuck = ", ".join(
                f"stage {s} at {actions[s][position[s]]}"
                for s in range(stages)
                if position[s] < len(actions[s])
            )
            raise ValueError(f"the schedule cannot proceed: {stuck}")
