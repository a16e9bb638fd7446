"""Searches over chains of cuts inside stage windows: find one split, or the best of all.

A split is a chain of ideals (down-closed unit sets) ∅ ⊂ I_0 ⊂ … ⊂ I_{S-1} = all units; stage s
holds I_s \\ I_{s-1}. Inside `planner/windows.py`'s windows for a cap T, cut s is the units that
must sit by it plus an ideal of its *band* (the units whose side is open), and its work lies in
[cum_min[s], cum_max[s]]. Narrow windows leave few such cuts, so:

- `find_chain` builds one chain cut by cut, each by a depth-first search for the first band
  ideal whose work lands in the cut's range (on branchy graphs with many small nodes, such as
  NASNet, a split as even as the bound allows is found in a few thousand steps);
- `best_chain` lists every cut in every range and runs the min-max dynamic program over them:
  every split whose slowest stage is at most T is among those chains, so the best chain is
  the optimum whenever it is at most T, and otherwise proves the optimum above T;
- `best_contiguous` splits one topological order into S runs, optimally for that order: a
  quick upper bound before the windows exist.

Both searches count their steps against a `Budget`, so the planner gives the same answer on
every machine, and says when a search was cut short.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from vpipe.planner.costmodel import stage_compute_ms, stage_time_ms
from vpipe.planner.precedence import Units
from vpipe.planner.windows import TOLERANCE, Windows

PAIRS_PER_BLOCK = 2_000_000  # (earlier cut, later cut) pairs costed at once in `best_chain`
STEPS_PER_CHARGE = 1024  # a search charges its budget in blocks (one call per step is slow)
# numpy work charged as search steps (a step is about half a microsecond of Python)
ELEMENTS_PER_STEP = 32


@dataclass
class Budget:
    """Search steps left to the whole solve (one step: one node of a depth-first search, or
    one candidate cut). Shared by every search, so the total work is bounded."""

    steps: int
    exhausted: bool = False

    def spend(self, steps: int) -> bool:
        """Take `steps`; False (and `exhausted`) when there are not that many left."""
        if steps > self.steps:
            self.steps = 0
            self.exhausted = True
            return False
        self.steps -= steps
        return True

    def share(self, steps: int) -> Budget:
        """A budget of at most `steps` out of this one; `settle` it afterwards."""
        return Budget(min(steps, self.steps))

    def settle(self, share: Budget, granted: int) -> None:
        """Charge what `share` (granted `granted` steps) used."""
        self.spend(granted - share.steps)


@dataclass(frozen=True, eq=False)
class CutCosts:
    """What a cut costs besides work: the bytes crossing it (each side's communication) and the
    CPU each end spends moving them (`link_ms`), per node whose output is read past the cut
    (or is a model output, read by the loss on the last stage).

    Built from the plan graph's own fields; `ms_per_byte` is read off the cost model."""

    ms_per_byte: float
    unit_of: np.ndarray  # per node
    readers: np.ndarray  # per (node, unit reading it) pair, sorted by node: the reading unit
    reader_nodes: np.ndarray  # the node of each pair
    output: np.ndarray  # bool per node
    out_bytes: np.ndarray
    link_ms: np.ndarray
    boundary_ms: float  # what every cut, and both ends, add to each side (costmodel.boundary_ms)

    @property
    def free(self) -> bool:
        """Whether cuts cost nothing beyond work (then stage time is work alone)."""
        return self.ms_per_byte == 0 and not self.link_ms.any() and not self.boundary_ms

    def of(self, inside: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(crossing bytes, each end's link ms) of each cut; `inside` is bool [cut, unit]."""
        count = len(inside)
        if self.ms_per_byte == 0 and not self.link_ms.any():  # no tensor's crossing costs
            return np.zeros(count), np.full(count, self.boundary_ms)
        node_in = inside[:, self.unit_of]
        read_outside = node_in[:, self.reader_nodes] & ~inside[:, self.readers]
        crosses = node_in & self.output[None, :]
        if len(self.reader_nodes):
            hit = np.zeros_like(crosses)
            rows, cols = np.nonzero(read_outside)
            hit[rows, self.reader_nodes[cols]] = True
            crosses |= hit
        crosses[inside.all(axis=1)] = False  # the whole graph sends nothing on
        return crosses @ self.out_bytes, crosses @ self.link_ms + self.boundary_ms


@dataclass(frozen=True, eq=False)
class Cuts:
    """Candidate cuts for one position: unit sets, their work, each end's link CPU and each
    side's transfer time."""

    inside: np.ndarray  # bool [cut, unit]
    work: np.ndarray
    link: np.ndarray
    comm_ms: np.ndarray

    @staticmethod
    def of(inside: np.ndarray, units: Units, costs: CutCosts) -> Cuts:
        crossing, link = costs.of(inside)
        return Cuts(inside, inside @ units.work, link, crossing * costs.ms_per_byte)

    def rows(self, part: slice) -> Cuts:
        return Cuts(self.inside[part], self.work[part], self.link[part], self.comm_ms[part])

    def stage_ms(self, earlier: Cuts) -> np.ndarray:
        """[earlier cut, this cut]: the time of the stage between them (no subset check)."""
        return stage_time(
            earlier.work[:, None],
            self.work[None, :],
            (earlier.link[:, None], self.link[None, :]),
            (earlier.comm_ms[:, None], self.comm_ms[None, :]),
        )

    def consecutive_ms(self) -> np.ndarray:
        """The time of the stage between each cut and the next (the cuts of one chain)."""
        return stage_time(
            self.work[:-1],
            self.work[1:],
            (self.link[:-1], self.link[1:]),
            (self.comm_ms[:-1], self.comm_ms[1:]),
        )


def stage_time(
    work_before: np.ndarray,
    work_after: np.ndarray,
    link: tuple[np.ndarray, np.ndarray],
    comm: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """`costmodel.evaluate_stage`'s time with nothing recomputed, for the stage between two cuts
    (`link` and `comm`: each end's CPU and each side's transfer time, before and after)."""
    compute = stage_compute_ms(work_after - work_before, 0.0, *link)
    return stage_time_ms(compute, *comm, np.maximum)


@dataclass(frozen=True)
class Chain:
    """A split as the searches return it: the units of each stage, and its slowest stage."""

    stages: tuple[tuple[int, ...], ...]
    stage_ms: tuple[float, ...]

    @property
    def bottleneck_ms(self) -> float:
        return max(self.stage_ms)


@dataclass(frozen=True)
class ChainSearch:
    """`best_chain`'s answer: the best chain among the candidates (None if there is none) and
    whether every candidate was listed (False: the budget ran out, nothing is proven)."""

    chain: Chain | None
    complete: bool


def band_ideals(
    units: Units,
    band: Sequence[int],
    low: float,
    high: float,
    budget: Budget,
) -> Iterator[int]:
    """Every ideal X of the band (its units' predecessors outside the band are inside already)
    whose work lies in [low, high], as a bitmask over band positions, depth first, including
    before excluding. Each ideal is yielded once: when its last unit is added (the empty one
    first, if it fits)."""
    tolerance = TOLERANCE * max(abs(high), 1.0)
    low, high = low - tolerance, high + tolerance
    size = len(band)
    work = [float(units.work[u]) for u in band]
    # band descendants of each position (inside windows, every path between two band units
    # stays in the band), as bitmasks, and their work
    below = units.descendants[np.ix_(band, band)].copy()
    np.fill_diagonal(below, False)
    later = _masks(below)
    later_work = (below @ units.work[band]).tolist() if size else []
    if low <= 0 <= high:
        yield 0
    # state: next position, chosen, its work, work still open (undecided positions not blocked
    # by a left-out predecessor: the most that can still be added), blocked positions
    stack = [(0, 0, 0.0, sum(work), 0)]
    steps = 0
    try:
        while stack:
            steps += 1
            if steps >= STEPS_PER_CHARGE:
                if not budget.spend(steps):
                    return
                steps = 0
            i, chosen, done, open_work, blocked = stack.pop()
            if i == size:
                continue
            if blocked >> i & 1:  # a predecessor was left out: so is this unit
                stack.append((i + 1, chosen, done, open_work, blocked))
                continue
            rest = open_work - work[i]
            newly = later[i] & ~blocked
            if newly == later[i]:
                shut = rest - later_work[i]
            else:
                shut = rest - _bits_work(newly, work)
                steps += newly.bit_count()
            if done + shut >= low:
                stack.append((i + 1, chosen, done, shut, blocked | later[i]))
            more = done + work[i]
            if more <= high:
                if more >= low:
                    yield chosen | 1 << i
                stack.append((i + 1, chosen | 1 << i, more, rest, blocked))
    finally:
        budget.spend(steps)


def _bits_work(mask: int, work: list[float]) -> float:
    total = 0.0
    while mask:
        low = mask & -mask
        total += work[low.bit_length() - 1]
        mask ^= low
    return total


def _masks(rows: np.ndarray) -> list[int]:
    """Each row of a bool matrix as an integer bitmask (column j is bit j)."""
    packed = np.packbits(rows, axis=1, bitorder="little")
    return [int.from_bytes(row.tobytes(), "little") for row in packed]


def _unpack(masks: list[int], width: int) -> np.ndarray:
    """Bitmasks over `width` positions as a bool matrix [mask, position]."""
    size = (width + 7) // 8
    raw = np.frombuffer(b"".join(m.to_bytes(size, "little") for m in masks), dtype=np.uint8)
    bits = np.unpackbits(raw.reshape(len(masks), size), axis=1, bitorder="little")
    return bits[:, :width].astype(bool)


def find_chain(
    units: Units, windows: Windows, costs: CutCosts, stages: int, budget: Budget
) -> Chain | None:
    """One split inside the windows, cut by cut: each cut the first band ideal (after the
    previous cut) whose work lands in its range; None if some cut has none within the budget.
    Its slowest stage is costed in full (communication may make it slower than the cap)."""
    inside = np.zeros(units.size, dtype=bool)
    cuts = [inside]
    for s in range(stages - 1):
        base = inside | windows.forced(s)
        band = [int(u) for u in windows.band(s) if not base[u]]
        done = float(units.work[base].sum())
        low = windows.cum_min[s] - done
        high = min(windows.cum_max[s], float(units.work[inside].sum()) + windows.cap_ms) - done
        joined = int((base & ~inside).sum())  # units that must join this stage
        left = units.size - int(base.sum())  # units not yet placed
        first = next(
            (
                x
                for x in band_ideals(units, band, low, high, budget)
                if 0 < joined + x.bit_count() < left + joined  # the stage and the rest not empty
            ),
            None,
        )
        if first is None:
            return None
        inside = base.copy()
        inside[[u for i, u in enumerate(band) if first >> i & 1]] = True
        cuts.append(inside)
    cuts.append(np.ones(units.size, dtype=bool))
    return chain_of(units, costs, np.array(cuts))


def chain_of(units: Units, costs: CutCosts, cuts: np.ndarray) -> Chain:
    """The chain through these cuts (bool [S + 1, unit], the empty set first) and its cost."""
    times = Cuts.of(cuts, units, costs).consecutive_ms()
    stages = tuple(
        tuple(int(u) for u in np.flatnonzero(cuts[k + 1] & ~cuts[k])) for k in range(len(cuts) - 1)
    )
    return Chain(stages, tuple(float(t) for t in times))


def candidate_cuts(
    units: Units, windows: Windows, costs: CutCosts, cut: int, budget: Budget, limit: int
) -> Cuts | None:
    """Every cut in position `cut`'s window, or None if the budget or `limit` ran out."""
    forced = windows.forced(cut)
    band = [int(u) for u in windows.band(cut)]
    done = float(units.work[forced].sum())
    masks = []
    low, high = windows.cum_min[cut] - done, windows.cum_max[cut] - done
    for x in band_ideals(units, band, low, high, budget):
        masks.append(x)
        if len(masks) > limit:
            return None
    if budget.exhausted:
        return None
    if not budget.spend(len(masks) * (units.size + len(costs.reader_nodes)) // ELEMENTS_PER_STEP):
        return None
    inside = np.repeat(forced[None, :], len(masks), axis=0)
    if band:
        inside[:, band] = _unpack(masks, len(band))
    return Cuts.of(inside, units, costs)


def best_chain(
    units: Units,
    windows: Windows,
    costs: CutCosts,
    stages: int,
    budget: Budget,
    limit: int,
) -> ChainSearch:
    """The min-max dynamic program over every chain of cuts inside the windows."""
    layers = [Cuts.of(np.zeros((1, units.size), dtype=bool), units, costs)]
    for s in range(stages - 1):
        cuts = candidate_cuts(units, windows, costs, s, budget, limit)
        if cuts is None:
            return ChainSearch(None, complete=False)
        layers.append(cuts)
    layers.append(Cuts.of(np.ones((1, units.size), dtype=bool), units, costs))
    best = np.zeros(1)
    choices = []
    for earlier, later in zip(layers, layers[1:], strict=False):
        pairs = len(earlier.work) * len(later.work)
        if not budget.spend(pairs * 8 // ELEMENTS_PER_STEP):
            return ChainSearch(None, complete=False)
        best, choice = _step(earlier, later, best)
        choices.append(choice)
    if not np.isfinite(best[0]):
        return ChainSearch(None, complete=True)
    picked = [0]
    for choice in reversed(choices):
        picked.append(int(choice[picked[-1]]))
    picked.reverse()
    chosen = np.array([layer.inside[k] for layer, k in zip(layers, picked, strict=True)])
    return ChainSearch(chain_of(units, costs, chosen), complete=True)


def _step(earlier: Cuts, later: Cuts, best: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One stage of the dynamic program: for each later cut, the best earlier cut inside it."""
    value = np.full(len(later.work), math.inf)
    choice = np.zeros(len(later.work), dtype=np.int64)
    varying = earlier.inside.any(axis=0) & ~earlier.inside.all(axis=0)
    varying |= later.inside.any(axis=0) & ~later.inside.all(axis=0)
    left = earlier.inside[:, varying].astype(np.float32)
    sizes_before = earlier.inside.sum(axis=1)
    sizes_after = later.inside.sum(axis=1)
    block = max(1, PAIRS_PER_BLOCK // max(len(earlier.work), 1))
    for start in range(0, len(later.work), block):
        part = slice(start, start + block)
        outside = (~later.inside[part][:, varying]).astype(np.float32)
        subset = (left @ outside.T) == 0
        subset &= sizes_before[:, None] < sizes_after[None, part]
        fixed_in: np.ndarray = earlier.inside[:1, ~varying]
        kept_in = np.all(fixed_in <= later.inside[part][:, ~varying], axis=1)
        subset &= kept_in[None, :]
        stage = later.rows(part).stage_ms(earlier)
        total = np.where(subset, np.maximum(best[:, None], stage), math.inf)
        choice[part] = np.argmin(total, axis=0)
        value[part] = total[choice[part], np.arange(total.shape[1])]
    return value, choice


def best_contiguous(units: Units, costs: CutCosts, order: Sequence[int], stages: int) -> Chain:
    """The best split of `order` (a topological order of the units) into `stages` runs."""
    size = len(order)
    prefixes = np.zeros((size + 1, units.size), dtype=bool)
    for k, u in enumerate(order):
        prefixes[k + 1 :, u] = True
    cuts = Cuts.of(prefixes, units, costs)
    stage = cuts.stage_ms(cuts)  # [a, b]: the run order[a:b]
    stage[np.tril_indices(size + 1)] = math.inf  # runs are not empty
    best = np.full(size + 1, math.inf)
    best[0] = 0.0
    choices = []
    for _ in range(stages):
        total = np.maximum(best[:, None], stage)
        choice = np.argmin(total, axis=0)
        best = total[choice, np.arange(size + 1)]
        choices.append(choice)
    ends = [size]
    for choice in reversed(choices):
        ends.append(int(choice[ends[-1]]))
    ends.reverse()
    return chain_of(units, costs, prefixes[ends])
