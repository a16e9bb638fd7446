"""Plan a profile: solve for the split, then state its predictions and the baselines'."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from vpipe.common.errors import VpipeError
from vpipe.common.units import human_bytes
from vpipe.planner.baselines import BASELINE_RULE, baseline_split, baselines
from vpipe.planner.costmodel import recompute_free_bytes, schedule_shape, sent_nodes
from vpipe.planner.diagnose import explain_infeasible
from vpipe.planner.dp import solve_dp
from vpipe.planner.graph import PlanGraph, plan_graph
from vpipe.planner.ilp import solve_ilp
from vpipe.planner.predict import predict_pipeline, predict_stages
from vpipe.planner.recompute import MemoryRoom, cheapest_recompute
from vpipe.planner.schema import Plan, PlannedTie, PlanSettings, SolverInfo, Stage
from vpipe.planner.split import Split
from vpipe.profiler.schema import Profile

GIB = 2**30

SOLVERS = ("auto", "dp", "ilp")
ILP_AUTO_SIZE = 400  # nodes x stages up to which `auto` lets the ILP try to prove a dp answer


def graph_for(profile: Profile, settings: PlanSettings) -> PlanGraph:
    """The profile as the planner sees it under `settings`: asp updates after every
    micro-batch, 1f1b and gpipe after every M."""
    updates = 1.0 if settings.schedule == "asp" else 1.0 / settings.microbatches
    return plan_graph(profile, settings.optimizer, updates)


def solve(profile: Profile, settings: PlanSettings, solver: str = "auto") -> Split:
    graph = graph_for(profile, settings)
    if settings.recompute == "never":
        graph = dataclasses.replace(graph, never_recomputed=frozenset(range(graph.size)))
    if settings.gpus > len(profile.nodes):
        raise VpipeError(
            f"--gpus {settings.gpus} is more than the profile's {len(profile.nodes)} nodes; "
            "use fewer GPUs or a finer profile (fewer --leaf classes)"
        )
    if solver == "ilp":
        return least_recompute(graph, settings, solve_ilp(graph, settings))
    split = solve_dp(graph, settings)
    small = graph.size * settings.gpus <= ILP_AUTO_SIZE
    if solver == "auto" and not split.optimal and small:
        proven = solve_ilp(graph, settings, warm_start=split)
        seconds = split.seconds + proven.seconds
        if proven.feasible and proven.bottleneck_ms <= split.bottleneck_ms * (1 + 1e-9):
            same = split.feasible and proven.bottleneck_ms >= split.bottleneck_ms * (1 - 1e-9)
            if proven.optimal and same:  # the same value, now proven: keep dp's split
                return dataclasses.replace(
                    split, optimal=True, lower_bound_ms=split.bottleneck_ms, seconds=seconds
                )
            return dataclasses.replace(least_recompute(graph, settings, proven), seconds=seconds)
        if proven.optimal and not proven.feasible:  # proven that nothing fits
            return dataclasses.replace(split, optimal=True, seconds=seconds)
    return split


def _recompute_all(graph: PlanGraph, settings: PlanSettings, split: Split) -> Split:
    """The GPipe habit: every stage recomputes its whole forward (all but its inputs and the
    loss), on the split solved for the same cap."""
    everything = tuple(
        tuple(n for n in stage if n not in graph.never_recomputed) for stage in split.stages
    )
    for k, prediction in enumerate(predict_stages(graph, settings, split.stages, everything)):
        if prediction.memory.total > settings.memory_bytes:
            raise VpipeError(
                f"with everything recomputed, stage {k} needs "
                f"{human_bytes(prediction.memory.total)}, more than --memory allows (one "
                "segment that long rebuilds more than it saves); use --recompute auto"
            )
    return dataclasses.replace(split, recompute=everything)


def _baseline(graph: PlanGraph, settings: PlanSettings, rule: str) -> Split:
    model_nodes = graph.size - (graph.loss is not None)
    if settings.gpus > model_nodes:
        raise VpipeError(f"--gpus {settings.gpus} is more than the profile's {model_nodes} nodes")
    stages = baseline_split(graph, rule, settings.gpus)
    if any(not stage for stage in stages):
        raise VpipeError(f"the {rule} split leaves a stage empty here; use fewer --gpus")
    none: list[list[int]] = [[] for _ in stages]
    for k, prediction in enumerate(predict_stages(graph, settings, stages, none)):
        if prediction.memory.total > settings.memory_bytes:
            raise VpipeError(
                f"the {rule} split does not fit: stage {k} needs "
                f"{human_bytes(prediction.memory.total)}, more than --memory allows "
                f"({human_bytes(settings.memory_bytes)} after headroom); raise "
                "--memory, or plan with --split optimal (which may recompute)"
            )
    return Split(
        solver=rule,
        feasible=True,
        stages=tuple(map(tuple, stages)),
        recompute=tuple(() for _ in stages),
        cuts=BASELINE_RULE,
    )


def least_recompute(graph: PlanGraph, settings: PlanSettings, split: Split) -> Split:
    """The ILP only minimises the slowest stage; give every stage its cheapest recompute set."""
    if not split.feasible:
        return split
    chosen = []
    before: list[int] = []
    for index, (stage, recompute) in enumerate(zip(split.stages, split.recompute, strict=True)):
        room = MemoryRoom(
            room=settings.memory_bytes
            - recompute_free_bytes(graph, settings, index, before, stage),
            in_flight=schedule_shape(settings, index).in_flight,
        )
        found = cheapest_recompute(graph, stage, room, sent=sent_nodes(graph, before, stage))
        chosen.append(found.chosen if found.chosen is not None else recompute)
        before += stage
    return dataclasses.replace(split, recompute=tuple(chosen))


def make_plan(
    profile: Profile,
    profile_path: str,
    profile_sha256: str,
    settings: PlanSettings,
    solver: str = "auto",
    rule: str = "optimal",
) -> tuple[Plan, float]:
    """The plan for `profile` under `settings` and the solve time in seconds; VpipeError (with
    the reason) if none fits. `rule`: "optimal" solves; a baseline's name (uniform,
    parameter-balanced) takes that rule's split instead, so that it can be run and measured."""
    graph = graph_for(profile, settings)
    if rule == "optimal":
        split = solve(profile, settings, solver)
        if not split.feasible:
            caveat = "" if split.optimal else " (not proven: the recompute search was cut short)"
            raise VpipeError(explain_infeasible(graph, settings) + caveat)
    else:
        split = _baseline(graph, settings, rule)
    if settings.recompute == "all":
        split = _recompute_all(graph, settings, split)
    placed = sorted(n for stage in split.stages for n in stage)
    if placed != list(range(graph.size)):  # a solver bug: never write a plan that drops nodes
        missing = sorted(set(range(graph.size)) - set(placed))
        raise VpipeError(
            f"the {split.solver} solver placed {len(placed)} of {graph.size} nodes (missing "
            f"{', '.join(graph.names[n] for n in missing[:3])}): a vpipe bug, please report it "
            "with the profile; meanwhile try another --solver"
        )
    predictions = predict_stages(graph, settings, split.stages, split.recompute)
    names = graph.names
    stages = tuple(
        Stage(
            index=k,
            nodes=tuple(names[n] for n in stage if n != graph.loss),  # the model's nodes
            recompute=tuple(names[n] for n in chosen),
            predicted=prediction,
        )
        for k, (stage, chosen, prediction) in enumerate(
            zip(split.stages, split.recompute, predictions, strict=True)
        )
    )
    plan = Plan(
        profile=profile_path,
        profile_sha256=profile_sha256,
        batch_size=profile.batch_size,
        settings=settings,
        stages=stages,
        predicted=predict_pipeline(graph, settings, profile.batch_size, split.stages, predictions),
        baselines=tuple(baselines(graph, settings, profile.batch_size)),
        solver=SolverInfo(
            name=split.solver,
            optimal=split.optimal,
            lower_bound_ms=split.lower_bound_ms if math.isfinite(split.lower_bound_ms) else 0.0,
            cuts=split.cuts,
        ),
        notes=graph.notes,
        ties=planned_ties(graph, split.stages),
    )
    return plan, split.seconds


def planned_ties(graph: PlanGraph, stages: Sequence[Sequence[int]]) -> tuple[PlannedTie, ...]:
    """Each tie and the stages its users run on (each holds a copy)."""
    stage_of = {n: k for k, stage in enumerate(stages) for n in stage}
    return tuple(
        PlannedTie(tie.names, tuple(sorted({stage_of[u] for u in tie.users}))) for tie in graph.ties
    )
