"""The answer every solver returns: which nodes each stage holds and which it recomputes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """A solver's result, in node indices; `feasible` False means no split fits memory."""

    solver: str
    feasible: bool
    stages: tuple[tuple[int, ...], ...] = ()
    recompute: tuple[tuple[int, ...], ...] = ()
    bottleneck_ms: float = float("inf")  # the slowest stage's time per micro-batch
    optimal: bool = False  # proven optimal over the cuts named in `cuts`
    lower_bound_ms: float = 0.0
    seconds: float = 0.0
    cuts: str = "all"
    # each stage's time and memory as the solver's own formulation costs them (memory left
    # empty by a solver that does not model it): tests/planner/test_agreement.py checks them
    # against costmodel.evaluate_stage
    stage_ms: tuple[float, ...] = ()
    stage_bytes: tuple[float, ...] = ()
