"""The same model as an integer program (PuLP; HiGHS when installed, CBC otherwise).

It is the oracle that keeps the dynamic program honest on small graphs, and the fallback that
proves (or improves) a split when the DAG has too many cuts to enumerate. Variables are named
after what they mean:

    x[n,k]  node n is on stage k          r[n]    node n is recomputed
    z[n,k]  n is on stage k and recomputed (x AND r)
    c[u,k]  u's output crosses the cut after stage k
    e[u,k]  u is on stage k and crosses the cut after it (sent: a copy when not dense)
    h[t,k]  tensor t is kept on stage k    q[n,k]  transient of the open segment at n
    p[k]    stage k's largest segment      b[k]    stage k's backward peak (max over nodes)
    T       the bottleneck time (minimised)
"""

from __future__ import annotations

import math
import time
from typing import Any

import pulp

from vpipe.planner.costmodel import (
    StageBytes,
    boundary_ms,
    comm_ms,
    output_gradient_bytes,
    stage_compute_ms,
    stage_memory,
    stage_time_ms,
)
from vpipe.planner.graph import PlanGraph
from vpipe.planner.highs import quiet_stdout
from vpipe.planner.schema import PlanSettings
from vpipe.planner.split import Split

TIME_LIMIT_S = 60.0
Sums = dict[int, pulp.LpAffineExpression]  # per cut: an expression over the variables


def _solver(time_limit: float) -> pulp.LpSolver:
    if "HiGHS" in pulp.listSolvers(onlyAvailable=True):
        return pulp.HiGHS(msg=False, timeLimit=time_limit)
    return pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit)


def solve_ilp(
    graph: PlanGraph,
    settings: PlanSettings,
    warm_start: Split | None = None,
    time_limit: float = TIME_LIMIT_S,
) -> Split:
    start = time.perf_counter()
    program = _Program(graph, settings)
    prob = program.prob
    times, memories = program.stage_rows()
    if warm_start is not None and warm_start.feasible:
        prob += program.bottleneck <= warm_start.bottleneck_ms  # only a better split counts
    with quiet_stdout():
        prob.solve(_solver(time_limit))
    if prob.sol_status not in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
        return Split(
            solver="ilp",
            feasible=False,
            optimal=prob.sol_status == pulp.LpSolutionInfeasible,
            seconds=time.perf_counter() - start,
        )
    optimal = prob.sol_status == pulp.LpSolutionOptimal
    x, r = program.x, program.r
    placed = tuple(tuple(n for n in program.nodes if x[n, k].value() > 0.5) for k in program.stages)
    recompute = tuple(tuple(n for n in stage if r[n].value() > 0.5) for stage in placed)
    _settle(prob, [*x.values(), *r.values()], [*times, *memories], time_limit)
    value = max(t.value() for t in times)  # the split's own, not within the MIP's tolerance
    return Split(
        solver="ilp",
        feasible=True,
        stages=placed,
        recompute=recompute,
        bottleneck_ms=value,
        optimal=optimal,
        lower_bound_ms=value if optimal else 0.0,
        seconds=time.perf_counter() - start,
        stage_ms=tuple(t.value() for t in times),
        stage_bytes=tuple(m.value() for m in memories),
    )


class _Program:
    """The program's variables and constraints, one group per method (the module docstring
    names the variables)."""

    def __init__(self, graph: PlanGraph, settings: PlanSettings) -> None:
        self.graph, self.settings = graph, settings
        self.nodes, self.stages = range(graph.size), range(settings.gpus)
        nodes, stages = self.nodes, self.stages
        prob = self.prob = pulp.LpProblem("vpipe_split", pulp.LpMinimize)
        unit = {"lowBound": 0, "upBound": 1}
        self.x = {
            (n, k): prob.add_variable(f"x_{n}_{k}", cat=pulp.LpBinary)
            for n in nodes
            for k in stages
        }
        self.r = {n: prob.add_variable(f"r_{n}", cat=pulp.LpBinary) for n in nodes}
        self.z = {(n, k): prob.add_variable(f"z_{n}_{k}", **unit) for n in nodes for k in stages}
        self.c = {
            (u, k): prob.add_variable(f"c_{u}_{k}", **unit) for u in nodes for k in stages[:-1]
        }
        self.h = {(t, k): prob.add_variable(f"h_{t}_{k}", **unit) for t in nodes for k in stages}
        self.p = {k: prob.add_variable(f"p_{k}", lowBound=0) for k in stages}
        self.b = {k: prob.add_variable(f"b_{k}", lowBound=0) for k in stages}
        self.bottleneck = prob.add_variable("T", lowBound=0)
        prob += self.bottleneck
        self._placement()
        self._recomputed()
        self.crossing, self.link, self.copied = self._crossing()
        self._kept()
        self.w = self._ties()
        self._transient()

    def stage_of(self, n: int) -> pulp.LpAffineExpression:
        return pulp.lpSum(k * self.x[n, k] for k in self.stages)

    def y(self, n: int, k: int) -> pulp.LpAffineExpression:
        return pulp.lpSum(self.x[n, j] for j in range(k + 1))

    def larger(self, a: pulp.LpAffineExpression, b: pulp.LpAffineExpression) -> pulp.LpVariable:
        """A variable at least max(a, b): the objective pushes it down to the larger."""
        most = self.prob.add_variable(f"larger_{len(self.prob.variables())}", lowBound=0)
        self.prob.addConstraint(most >= a)
        self.prob.addConstraint(most >= b)
        return most

    def _placement(self) -> None:
        """One stage per node, none empty, every edge forward, groups whole."""
        prob, x, graph = self.prob, self.x, self.graph
        for n in self.nodes:
            prob += pulp.lpSum(x[n, k] for k in self.stages) == 1
        for k in self.stages:
            prob += pulp.lpSum(x[n, k] for n in self.nodes) >= 1
        for u in self.nodes:
            for v in graph.succs[u]:
                prob += self.stage_of(u) <= self.stage_of(v)
        for first, *rest in graph.together:
            for n in rest:
                prob += self.stage_of(n) == self.stage_of(first)

    def _recomputed(self) -> None:
        """z = x AND r; placeholders and the loss are never recomputed."""
        prob, x, r = self.prob, self.x, self.r
        for n in self.graph.never_recomputed:
            prob += r[n] == 0
        for (n, k), var in self.z.items():
            prob += var <= x[n, k]
            prob += var <= r[n]
            prob += var >= x[n, k] + r[n] - 1

    def _crossing(self) -> tuple[Sums, Sums, Sums]:
        """Per cut k (after stage k): the bytes crossing it, each end's CPU for them, and what
        stage k copies to send (its own outputs that are not laid out densely). A tensor
        crosses when produced up to stage k and needed after it (model outputs by the loss)."""
        prob, c, graph, nodes, cuts = self.prob, self.c, self.graph, self.nodes, self.stages[:-1]
        for u in nodes:
            for k in cuts:
                for v in graph.succs[u]:
                    prob += c[u, k] >= self.y(u, k) - self.y(v, k)
                if u in graph.outputs:
                    prob += c[u, k] >= self.y(u, k)
        crossing = {k: pulp.lpSum(graph.out_bytes[u] * c[u, k] for u in nodes) for k in cuts}
        link = {k: pulp.lpSum(graph.link_ms[u] * c[u, k] for u in nodes) for k in cuts}
        copies = [u for u in nodes if graph.copied_bytes[u]]
        e = {
            (u, k): prob.add_variable(f"e_{u}_{k}", lowBound=0, upBound=1)
            for u in copies
            for k in cuts
        }
        for (u, k), var in e.items():
            prob += var >= c[u, k] + self.x[u, k] - 1
        copied = {k: pulp.lpSum(graph.copied_bytes[u] * e[u, k] for u in copies) for k in cuts}
        return crossing, link, copied

    def _kept(self) -> None:
        """Tensor t is kept on stage k by a holder that is not recomputed, as the input of a
        checkpoint segment, or as a tensor the stage sends on (its backward's root)."""
        prob, graph, x, z, h, nodes = self.prob, self.graph, self.x, self.z, self.h, self.nodes
        for u in nodes:
            for k in self.stages[:-1]:
                prob += h[graph.owner[u], k] >= x[graph.owner[u], k] + self.c[u, k] - 1
        for t in nodes:
            for k in self.stages:
                for holder in graph.holders[t]:
                    prob += h[t, k] >= x[t, k] + x[holder, k] - z[holder, k] - 1
                for reader in (n for n in nodes if t in graph.reads[n] and n != t):
                    prob += h[t, k] >= z[reader, k] + x[t, k] - 1 - z[t, k]
                    for between in range(t + 1, reader):
                        prob += (
                            h[t, k] >= z[reader, k] + x[t, k] + x[between, k] - z[between, k] - 2
                        )

    def _ties(self) -> dict[tuple[int, int], pulp.LpVariable]:
        """w[j, k]: stage k holds a copy of tie j (runs a user of it, not its owner)."""
        ties = range(len(self.graph.ties))
        w = {
            (j, k): self.prob.add_variable(f"w_{j}_{k}", lowBound=0, upBound=1)
            for j in ties
            for k in self.stages
        }
        for (j, k), var in w.items():
            users = self.graph.ties[j].users
            for user in users[1:]:
                self.prob += var >= self.x[user, k] - self.x[users[0], k]
        return w

    def _transient(self) -> None:
        """p[k]: the open segment grows through recomputed nodes of the stage and skips the
        others; b[k]: the backward peak, with the outputs' gradient on the loss's stage."""
        prob, graph, x, z = self.prob, self.graph, self.x, self.z
        loss, made = graph.loss, output_gradient_bytes(graph)
        q = {
            (n, k): prob.add_variable(f"q_{n}_{k}", lowBound=0)
            for n in self.nodes
            for k in self.stages
        }
        big = sum(graph.transient_bytes(n) for n in self.nodes) + 1
        for k in self.stages:
            for n in self.nodes:
                previous = q[n - 1, k] if n else 0
                prob += q[n, k] >= previous + graph.transient_bytes(n) - big * (1 - z[n, k])
                prob += q[n, k] >= previous - big * x[n, k]
                prob += self.p[k] >= q[n, k]
                if graph.backward_bytes[n]:
                    prob += self.b[k] >= graph.backward_bytes[n] * x[n, k]
                if loss is not None and n != loss:
                    peak = (graph.backward_bytes[n] + made) * x[n, k] - made * (1 - x[loss, k])
                    prob += self.b[k] >= peak

    def stage_rows(self) -> tuple[list[pulp.LpVariable], list[Any]]:
        """Each stage's time (T at least it) and memory (at most the cap), from the cost
        model's formulas over this program's sums."""
        graph, settings, x, z, w = self.graph, self.settings, self.x, self.z, self.w
        last = settings.gpus - 1
        times: list[pulp.LpVariable] = []
        memories: list[Any] = []  # PuLP expressions (stage_memory takes the sums' type)
        for k in self.stages:
            received = self.crossing[k - 1] if k else 0
            sent = self.crossing[k] if k < last else 0
            work = pulp.lpSum(graph.compute_ms(n) * x[n, k] for n in self.nodes)
            recomputed = pulp.lpSum(graph.fwd_ms[n] * z[n, k] for n in self.nodes)
            edge = boundary_ms(graph)
            compute = stage_compute_ms(
                work, recomputed, self.link.get(k - 1, 0) + edge, self.link.get(k, 0) + edge
            )
            comm_in, comm_out = comm_ms(received, settings), comm_ms(sent, settings)
            times.append(stage_time_ms(compute, comm_in, comm_out, self.larger))
            self.prob += self.bottleneck >= times[-1]
            sums = StageBytes(
                params=pulp.lpSum(graph.param_bytes[n] * x[n, k] for n in self.nodes)
                + pulp.lpSum(tie.param_bytes * w[j, k] for j, tie in enumerate(graph.ties)),
                trainable=pulp.lpSum(graph.trainable_bytes[n] * x[n, k] for n in self.nodes)
                + pulp.lpSum(tie.trainable_bytes * w[j, k] for j, tie in enumerate(graph.ties)),
                kept=pulp.lpSum(
                    graph.internal_bytes[n] * (x[n, k] - z[n, k])
                    + graph.out_bytes[n] * self.h[n, k]
                    for n in self.nodes
                ),
                received=received,
                sent=sent,
                copied=self.copied.get(k, 0),
                segment=self.p[k],
                backward=self.b[k],
            )
            memory = stage_memory(settings, k, graph.optimizer_factor, sums, self.larger).total
            memories.append(memory)
            if math.isfinite(settings.memory_bytes):
                self.prob += memory <= settings.memory_bytes
        return times, memories


def _settle(
    prob: pulp.LpProblem,
    choices: list[pulp.LpVariable],
    figures: list[pulp.LpAffineExpression],
    time_limit: float,
) -> None:
    """Bring every stage's time and memory down to what the chosen split costs: the solve
    bounds them only from below where no stage is at its limit. With the choices fixed, what
    is left is a linear program whose every variable is only bounded below, so minimising the
    figures' sum minimises each of them."""
    for var in choices:
        var.lowBound = var.upBound = round(var.value())
    prob.setObjective(pulp.lpSum(figures))
    with quiet_stdout():
        prob.solve(_solver(time_limit))
