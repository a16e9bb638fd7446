"""Where each unit can sit when no stage may hold more than `cap` ms of work: stage windows.

Splitting a DAG into S ordered stages with the slowest stage fastest is SALBP-2, assembly line
balancing (Scholl, "Balancing and Sequencing of Assembly Lines", 1999). Its exact methods bound
each task's earliest and latest station from the work before and after it; the bounds here are
those, sharpened. Every split whose stages each hold at most `cap` ms of work (forward +
backward: a stage's time is never less) obeys them:

- a unit sits no earlier than stage ceil(ancestors' work / cap) - 1, its ancestors included,
  and no earlier than its predecessors; and if the ancestors that cannot sit before its
  earliest stage weigh more than `cap` together, a stage later (a chain of heavy nodes: the
  stem of Inception-v3 fills its first stages alone). The same from the descendants' side
  gives the latest stage;
- the work in stages 0..s (cut s) is at most (s + 1) x cap, at most the work of the units that
  may sit there, and at most cut s - 1's plus cap; at least what the later stages cannot take,
  the work of the units that must sit there, and cut s + 1's less cap;
- a unit cannot sit in stages 0..s if its ancestors and the units that must sit there weigh
  more than cut s may; nor after s if its descendants and the units that cannot sit there
  weigh more than what cut s must leave.

They feed each other, so they are applied until nothing changes. If they contradict, no split
with every stage at most `cap` exists: `stage_windows` returns None, a proof that the optimum
is above `cap`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from vpipe.planner.precedence import Units

TOLERANCE = 1e-9  # relative: sums of floats that tie with the cap count as fitting
MAX_ROUNDS = 32  # the rules converge in a few rounds; this only guards against a slow drift


@dataclass(frozen=True, eq=False)
class Windows:
    """Stage windows for a cap: unit v sits in stages earliest[v]..latest[v], and the work of
    stages 0..s lies in cum_min[s]..cum_max[s]."""

    cap_ms: float
    earliest: np.ndarray  # int64 per unit
    latest: np.ndarray
    cum_min: np.ndarray  # float64 per cut s = 0..S-1 (the last is all the work)
    cum_max: np.ndarray

    def band(self, cut: int) -> np.ndarray:
        """Units whose side of cut s is open: they may sit at or before it, and after it."""
        return np.flatnonzero((self.earliest <= cut) & (cut < self.latest))

    def forced(self, cut: int) -> np.ndarray:
        """Units that must sit at or before cut s."""
        return self.latest <= cut


def stage_windows(units: Units, stages: int, cap_ms: float) -> Windows | None:
    """The windows for `cap_ms`, or None when no split keeps every stage within it."""
    slack = max(cap_ms * (1 + TOLERANCE), 1e-12)  # a graph of free nodes has a cap of 0
    total = float(units.work.sum())
    if total > stages * slack or float(units.work.max(initial=0.0)) > slack:
        return None
    before = units.ancestors @ units.work
    after = units.descendants @ units.work
    earliest = np.maximum(np.ceil(before / slack) - 1, 0).astype(np.int64)
    latest = np.minimum(stages - np.ceil(after / slack), stages - 1).astype(np.int64)
    for _ in range(MAX_ROUNDS):
        cum = _cumulative(units, stages, slack, earliest, latest)
        if cum is None:
            return None
        cum_min, cum_max = cum
        moved = _push_later(units, slack, earliest, latest, cum_max)
        if moved is None:
            return None
        pulled = _pull_earlier(units, slack, earliest, latest, cum_min, total)
        if pulled is None:
            return None
        if not moved and not pulled:
            return Windows(cap_ms, earliest, latest, cum_min, cum_max)
    cum = _cumulative(units, stages, slack, earliest, latest)
    return None if cum is None else Windows(cap_ms, earliest, latest, *cum)


def _cumulative(
    units: Units, stages: int, slack: float, earliest: np.ndarray, latest: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """Bounds on the work of stages 0..s, or None if some cut has none."""
    total = float(units.work.sum())
    per_stage_early = np.bincount(earliest, weights=units.work, minlength=stages)
    per_stage_late = np.bincount(latest, weights=units.work, minlength=stages)
    may = np.cumsum(per_stage_early)  # work of the units that may sit in stages 0..s
    must = np.cumsum(per_stage_late)
    cum_max = np.minimum(np.arange(1, stages + 1) * slack, may)
    cum_min = np.maximum(total - np.arange(stages - 1, -1, -1) * slack, must)
    for s in range(1, stages):
        cum_max[s] = min(cum_max[s], cum_max[s - 1] + slack)
    for s in range(stages - 2, -1, -1):
        cum_min[s] = max(cum_min[s], cum_min[s + 1] - slack)
        cum_max[s] = min(cum_max[s], cum_max[s + 1])
    for s in range(1, stages):
        cum_min[s] = max(cum_min[s], cum_min[s - 1])
    cum_max[-1] = min(cum_max[-1], total)
    if np.any(cum_min > cum_max + TOLERANCE * slack) or cum_max[-1] < total - TOLERANCE * slack:
        return None
    return cum_min, cum_max


def _push_later(
    units: Units,
    slack: float,
    earliest: np.ndarray,
    latest: np.ndarray,
    cum_max: np.ndarray,
) -> bool | None:
    """Raise earliest stages, in topological order (see the module docstring); True if any
    moved, None on a contradiction."""
    work, ancestors = units.work, units.ancestors
    forced = [latest <= s for s in range(len(cum_max))]
    moved = False
    for v in range(units.size):
        original = int(earliest[v])
        stage = max([original, *(int(earliest[p]) for p in units.preds[v])])
        while stage <= latest[v]:
            earliest[v] = stage
            sharing = ancestors[v] & (earliest == stage)
            if work[sharing].sum() > slack:
                stage += 1
            elif work[ancestors[v] | forced[stage]].sum() > cum_max[stage] + TOLERANCE * slack:
                stage += 1
            else:
                break
        if stage > latest[v]:
            return None
        moved = moved or stage != original
        earliest[v] = stage
    return moved


def _pull_earlier(
    units: Units,
    slack: float,
    earliest: np.ndarray,
    latest: np.ndarray,
    cum_min: np.ndarray,
    total: float,
) -> bool | None:
    """Lower latest stages, in reverse topological order; True if any moved, None on a
    contradiction."""
    work, descendants = units.work, units.descendants
    outside = [earliest > s for s in range(len(cum_min))]  # units that cannot sit by cut s
    moved = False
    for v in range(units.size - 1, -1, -1):
        original = int(latest[v])
        stage = min([original, *(int(latest[s]) for s in units.succs[v])])
        while stage >= earliest[v]:
            latest[v] = stage
            sharing = descendants[v] & (latest == stage)
            if work[sharing].sum() > slack:
                stage -= 1
            elif (
                stage > 0
                and work[descendants[v] | outside[stage - 1]].sum()
                > total - cum_min[stage - 1] + TOLERANCE * slack
            ):
                stage -= 1
            else:
                break
        if stage < earliest[v]:
            return None
        moved = moved or stage != original
        latest[v] = stage
    return moved


def work_lower_bound(units: Units, stages: int) -> float:
    """The simplest bound on the slowest stage: the work shared evenly, or the largest unit."""
    return max(float(units.work.sum()) / stages, float(units.work.max(initial=0.0)))


def quantum(values: np.ndarray) -> float | None:
    """The largest power of ten (down to 1e-6) that every value is a whole multiple of, or
    None. Stage loads are sums of the values, so a bound on the slowest stage may be rounded
    up to a multiple of it: PipeDream's profiles give milliseconds to 3 decimals, and without
    this an even split a thousandth of a millisecond above the average could not be proven."""
    for digits in range(-3, 7):
        step = 10.0**-digits
        scaled = values / step
        # a whole multiple within float noise (~1e-15 of the value), not merely close to one
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-11 * np.maximum(np.abs(scaled), 1.0)):
            return step
    return None


def round_up(bound: float, step: float | None) -> float:
    """`bound` up to the next multiple of `step` (itself if already one, within float noise)."""
    if step is None:
        return bound
    return math.ceil(bound / step - 1e-6) * step
