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
    warmup = min(stages - 1 - stage, microbatches)
    actions = [Action(FORWARD, i) for i in range(warmup)]
    for i in range(microbatches - warmup):
        actions += [Action(FORWARD, warmup + i), Action(BACKWARD, i)]
    actions += [Action(BACKWARD, i) for i in range(microbatches - warmup, microbatches)]
    return actions


def gpipe(stages: int, microbatches: int, stage: int) -> list[Action]:
    """GPipe order: every forward, then every backward."""
    del stages, stage  # the same on every stage
    return [Action(FORWARD, i) for i in range(microbatches)] + [
        Action(BACKWARD, i) for i in range(microbatches)
    ]


SCHEDULES = {"1f1b": one_f_one_b, "gpipe": gpipe}


def schedule(name: str, stages: int, microbatches: int) -> list[list[Action]]:
    """The action list of every stage for one mini-batch of a synchronous schedule."""
    make = SCHEDULES[name]
    return [make(stages, microbatches, s) for s in range(stages)]


def peak_in_flight(actions: list[Action]) -> int:
    """Most micro-batches whose forward has run and whose backward has not, at once."""
    alive = peak = 0
    for action in actions:
        alive += 1 if action.kind == FORWARD else -1
        peak = max(peak, alive)
    return peak
