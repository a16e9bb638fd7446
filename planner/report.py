"""Show a plan to a person: a per-stage table, the gain over the baselines, and a bar chart."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console
from rich.table import Table

from vpipe.common.plotting import pyplot, save_figure
from vpipe.common.schedules import tied_delay
from vpipe.common.units import human_bytes
from vpipe.planner.baselines import BASELINE_RULE
from vpipe.planner.schema import Plan, PlannedTie

GIB = 2**30


def stage_table(plan: Plan) -> Table:
    s = plan.settings
    limit = (
        "no memory limit"
        if math.isinf(s.memory_bytes)
        else f"{human_bytes(s.memory_bytes)} usable per device"
    )
    processes = sum(stage.replicas for stage in plan.stages)
    replicated = processes > len(plan.stages)
    on = f" on {processes} processes" if replicated else ""
    table = Table(
        title=f"{len(plan.stages)} stages{on}, {s.schedule}"
        + (f", {s.microbatches} micro-batches" if s.schedule != "asp" else "")
        + f", {limit}"
    )
    for column in (
        "stage",
        "nodes",
        "recompute",
        "compute ms",
        "comm ms",
        "time ms",
        "weights",
        "activations",
        "buffers",
        "transient",
        "total",
    ):
        table.add_column(column, justify="right")
    if replicated:  # time ms is then the replicas' shared time, memory one replica's
        table.add_column("replicas", justify="right")
        table.add_column("all-reduce ms", justify="right")
    for stage in plan.stages:
        p = stage.predicted
        m = p.memory
        mark = " *" if stage.index == plan.predicted.bottleneck_stage else ""
        extra = (str(stage.replicas), f"{p.allreduce_ms:.3f}") if replicated else ()
        table.add_row(
            f"{stage.index}{mark}",
            str(len(stage.nodes)),
            str(len(stage.recompute)),
            f"{p.compute_ms:.3f}",
            f"{max(p.comm_in_ms, p.comm_out_ms):.3f}",
            f"{p.time_ms:.3f}",
            human_bytes(m.params + m.stash + m.grads + m.optimizer),
            human_bytes(m.activations),
            human_bytes(m.buffers),
            human_bytes(m.transient),
            human_bytes(m.total),
            *extra,
        )
    return table


def bottleneck_ms(plan: Plan) -> float:
    """The slowest stage's time per micro-batch: what the solvers minimise and bound."""
    return max(stage.predicted.time_ms for stage in plan.stages)


def optimality_gap(plan: Plan) -> float:
    """How far the slowest stage may be above the best possible: (it - bound) / bound."""
    bound = plan.solver.lower_bound_ms
    if plan.solver.optimal:
        return 0.0
    return (bottleneck_ms(plan) - bound) / bound if bound > 0 else math.inf


def proof_line(plan: Plan, seconds: float) -> str:
    """The solver, whether its answer is proven, its lower bound on the slowest stage, and the
    gap between them."""
    solver = plan.solver
    if solver.cuts == BASELINE_RULE:
        return f"split by the {solver.name} rule (--split), not solved: the baseline to beat"
    gap = optimality_gap(plan)
    proof = "proven optimal" if solver.optimal else "not proven optimal"
    size = "0%" if solver.optimal else f"{gap:.2%}" if math.isfinite(gap) else "unknown"
    bound = (
        f"slowest stage {bottleneck_ms(plan):.3f} ms, lower bound {solver.lower_bound_ms:.3f} ms, "
        f"gap {size}"
    )
    return f"solver {solver.name}: {proof} ({bound}), cuts: {solver.cuts}, {seconds:.2f} s"


def summary_lines(plan: Plan, seconds: float) -> list[str]:
    p = plan.predicted
    lines = [
        f"time per mini-batch {p.time_per_minibatch_ms:.3f} ms, "
        f"{p.throughput_samples_per_s:.1f} samples/s, bottleneck stage {p.bottleneck_stage} (*)"
        + (f", bubble {p.bubble_fraction:.0%}" if plan.settings.schedule != "asp" else ""),
        proof_line(plan, seconds),
    ]
    if plan.settings.message_ms is not None:
        lines.append(
            f"each end of a cut pays {plan.settings.message_ms:.4f} ms a message "
            "(--message-ms: the runtime's cost, as vpipe-probe measures it)"
        )
    if plan.settings.latency_ms is not None:
        lines.append(
            f"a message takes {plan.settings.latency_ms:.4f} ms beyond its copies "
            "(--latency-ms: its wait on the dependency chain, as vpipe-probe measures it)"
        )
    if plan.settings.jitter:
        lines.append(
            f"action times vary by {plan.settings.jitter:.3f} (--jitter: the log's standard "
            "deviation; the time per mini-batch is the expected one, the bubble at the means)"
        )
    for baseline in plan.baselines:
        gain = baseline.time_per_minibatch_ms / p.time_per_minibatch_ms
        fits = "" if baseline.fits else ", does not fit memory"
        lines.append(
            f"vs {baseline.name} split: {baseline.time_per_minibatch_ms:.3f} ms ({gain:.2f}x{fits})"
        )
    lines.extend(tie_line(tie, plan.settings.schedule) for tie in plan.ties)
    lines.extend(f"note: {note}" for note in plan.notes)
    return lines


def tie_line(tie: PlannedTie, schedule: str) -> str:
    """What the plan does with a parameter several nodes use."""
    head = f"tie {' / '.join(tie.names)}: "
    if len(tie.stages) == 1:
        return head + f"on one stage ({tie.stages[0]}), one tensor"
    owner, *others = tie.stages
    where = ", ".join(map(str, tie.stages[:-1])) + f" and {tie.stages[-1]}"
    if schedule == "asp":
        later = ", ".join(
            f"stage {h} before its update of micro-batch i + {tied_delay(owner, h)}" for h in others
        )
        how = f"asp: owner stage {owner} applies update i first, {later}"
    else:
        how = "summed by an all-reduce before each update"
    return head + f"copies on stages {where}, kept equal by summing their gradients ({how})"


def print_plan(plan: Plan, seconds: float, console: Console) -> None:
    console.print(stage_table(plan))
    for line in summary_lines(plan, seconds):
        console.print(line, highlight=False)


def plot_plan(plan: Plan, path: str | Path) -> None:
    """Per-stage time (compute, recompute, comm) and memory by kind against the device limit."""
    plt = pyplot()
    stages = plan.stages
    xs = [s.index for s in stages]
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(xs) + 6), 4.5))
    transfer = [s.predicted.transfer_ms for s in stages]
    recompute = [s.predicted.recompute_ms for s in stages]
    base = [
        s.predicted.compute_ms - r - t for s, r, t in zip(stages, recompute, transfer, strict=True)
    ]
    left.bar(xs, base, label="forward + backward", color="tab:blue")
    left.bar(xs, recompute, bottom=base, label="recompute", color="tab:purple")
    left.bar(
        xs,
        transfer,
        bottom=[b + r for b, r in zip(base, recompute, strict=True)],
        label="transfers (CPU)",
        color="tab:orange",
    )
    left.plot(
        xs,
        [max(s.predicted.comm_in_ms, s.predicted.comm_out_ms) for s in stages],
        "k_",
        markersize=20,
        label="communication",
    )
    left.set(xlabel="stage", ylabel="ms per micro-batch", title="time")
    left.legend()
    kinds = ("params", "stash", "grads", "optimizer", "activations", "buffers", "transient")
    bottom = [0.0] * len(stages)
    for kind in kinds:
        values = [getattr(s.predicted.memory, kind) / GIB for s in stages]
        right.bar(xs, values, bottom=bottom, label=kind)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    if math.isfinite(plan.settings.memory_bytes):
        right.axhline(
            plan.settings.memory_bytes / GIB, color="red", linestyle="--", label="usable memory"
        )
    right.set(xlabel="stage", ylabel="GiB", title="memory")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.set_xticks(xs)
    save_figure(fig, path)
