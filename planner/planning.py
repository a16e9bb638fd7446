"""Plan a profile: solve for the split, then state its predictions and the baselines'."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from vpipe.common.errors import VpipeError
from vpipe.common.units import human_bytes
from vpipe.planner.baselines import BASELINE_RULE, baseline_split, baselines
from vpipe.planner.costmodel import (
    evaluate_stage,
    recompute_free_bytes,
    schedule_shape,
    sent_nodes,
)
from vpipe.planner.cuts import all_ideals
from vpipe.planner.diagnose import explain_infeasible
from vpipe.planner.dp import IDEAL_LIMIT, solve_dp
from vpipe.planner.exact import PROOF_GAP, solve_exact
from vpipe.planner.graph import PlanGraph, plan_graph
from vpipe.planner.hybrid import Cuts, HybridSplit, solve_hybrid
from vpipe.planner.predict import (
    predict_pipeline,
    predict_replicated_pipeline,
    predict_stages,
)
from vpipe.planner.recompute import MemoryRoom, cheapest_recompute
from vpipe.planner.schema import (
    Baseline,
    Plan,
    PlannedTie,
    PlanSettings,
    SolverInfo,
    Stage,
    StagePrediction,
)
from vpipe.planner.split import Split
from vpipe.profiler.schema import Profile

GIB = 2**30
TIE = 1e-9  # relative: plans this close are equally fast (sums in another order)

SOLVERS = ("auto", "dp", "ilp")
ILP_AUTO_SIZE = 400  # nodes x stages up to which `auto` lets the ILP try to prove a dp answer


def graph_for(profile: Profile, settings: PlanSettings) -> PlanGraph:
    """The profile as the planner sees it under `settings` (`plan_graph` charges each node's
    backward the gradient work of the schedule, and each message what `--message-ms` says)."""
    return plan_graph(
        profile, settings.optimizer, settings.schedule, settings.microbatches, settings.message_ms
    )


def solve(profile: Profile, settings: PlanSettings, solver: str = "auto") -> Split:
    """The split `solver` finds (`SOLVERS`; docs/planner.md says how), with its lower bound:
    `auto` starts from the exact search without a memory cap (`planner/exact.py`)."""
    graph = graph_for(profile, settings)
    if settings.recompute == "never":
        graph = dataclasses.replace(graph, never_recomputed=frozenset(range(graph.size)))
    if settings.gpus > len(profile.nodes):
        raise VpipeError(
            f"--gpus {settings.gpus} is more than the profile's {len(profile.nodes)} nodes; "
            "use fewer GPUs or a finer profile (fewer --leaf classes)"
        )
    if settings.stage_speeds and solver != "dp":
        if solver == "ilp":
            raise VpipeError("--stage-speeds: the ilp solver plans devices of one speed; use dp")
        solver = "dp"  # the only solver that weighs each stage index's device on its own
    if solver == "ilp":
        return least_recompute(graph, settings, _solve_ilp(graph, settings))
    if solver == "dp":
        return solve_dp(graph, settings)
    unlimited = solve_exact(graph, dataclasses.replace(settings, memory_bytes=math.inf))
    if math.isinf(settings.memory_bytes) and unlimited.optimal:
        return unlimited
    if math.isinf(settings.memory_bytes):
        return _bounded(graph, settings, [unlimited], unlimited.lower_bound_ms)
    within = _within_cap(graph, settings, unlimited) if unlimited.feasible else None
    if within is not None and within.optimal:
        return within
    return _bounded(graph, settings, [within] if within else [], unlimited.lower_bound_ms)


def _within_cap(graph: PlanGraph, settings: PlanSettings, unlimited: Split) -> Split | None:
    """The split that is optimal without a memory cap, each stage given its cheapest
    recompute, if then every stage fits the cap. Nothing fits faster than the optimum with no
    cap at all, so when recompute is not needed on the slowest stage it is optimal here too."""
    fitted = least_recompute(graph, settings, unlimited)
    predictions = predict_stages(graph, settings, fitted.stages, fitted.recompute)
    if any(p.memory.total > settings.memory_bytes for p in predictions):
        return None
    bottleneck = max(p.time_ms for p in predictions)
    return dataclasses.replace(
        fitted,
        bottleneck_ms=bottleneck,
        optimal=bottleneck <= unlimited.lower_bound_ms * (1 + PROOF_GAP),
    )


def _bounded(
    graph: PlanGraph, settings: PlanSettings, found: list[Split], floor_ms: float
) -> Split:
    """When the exact search did not prove its answer, or a memory cap binds: the dynamic
    program over every cut where they are few enough (with recompute; under a cap, always),
    then the ILP on small graphs; the best answer, with the best lower bound of them all
    (`floor_ms`: the optimum with no cap, or a bound on it)."""
    if all_ideals(graph, IDEAL_LIMIT) is not None or math.isfinite(settings.memory_bytes):
        found = [*found, solve_dp(graph, settings)]
    best = _best_of(found, floor_ms)
    if graph.size * settings.gpus <= ILP_AUTO_SIZE and not best.optimal:
        proven = _solve_ilp(graph, settings, warm_start=best if best.feasible else None)
        if proven.feasible:
            found.append(least_recompute(graph, settings, proven))
            best = _best_of(found, floor_ms)
        elif proven.optimal:  # nothing better than `best` exists (nothing at all, if none)
            best = dataclasses.replace(best, optimal=True, lower_bound_ms=best.bottleneck_ms)
        found.append(proven)
    return dataclasses.replace(best, seconds=sum(split.seconds for split in found))


def _best_of(found: list[Split], floor_ms: float) -> Split:
    """The fastest feasible split, with the highest lower bound any solver proved; every such
    bound holds over all cuts, so a split that meets it is proven over all cuts. With no
    feasible split: a solver's proof that nothing fits, if any."""
    feasible = [split for split in found if split.feasible]
    if not feasible:
        proof = [split for split in found if split.optimal]
        return proof[0] if proof else found[-1]
    best = min(feasible, key=lambda split: split.bottleneck_ms)
    lower = min(max([floor_ms, *(split.lower_bound_ms for split in feasible)]), best.bottleneck_ms)
    if best.optimal or best.bottleneck_ms <= lower * (1 + PROOF_GAP):
        return dataclasses.replace(best, optimal=True, lower_bound_ms=lower, cuts="all")
    return dataclasses.replace(best, lower_bound_ms=lower)


def _solve_ilp(graph: PlanGraph, settings: PlanSettings, warm_start: Split | None = None) -> Split:
    """The ILP, imported only when used (PuLP takes a fifth of a second to import)."""
    from vpipe.planner.ilp import solve_ilp

    return solve_ilp(graph, settings, warm_start=warm_start)


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
            replicas=1,
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


def make_hybrid_plan(
    profile: Profile,
    profile_path: str,
    profile_sha256: str,
    settings: PlanSettings,
    stages: int | None,
    solver: str = "auto",
) -> tuple[Plan, float]:
    """The fastest plan on at most `settings.gpus` processes with data-parallel replicas
    (`planner/hybrid.py`), `stages` stages if given, else as many as is fastest. Choosing
    freely, the straight pipeline on every GPU (`make_plan`) wins where it is no slower."""
    graph = graph_for(profile, settings)
    if stages is not None and stages > graph.size - (graph.loss is not None):
        raise VpipeError(f"--stages {stages} is more than the profile's nodes; use fewer")
    if stages is not None and stages > settings.gpus:
        raise VpipeError(
            f"--stages {stages} is more than --gpus {settings.gpus}: a stage needs a process"
        )
    family = Cuts.of(graph)
    found = solve_hybrid(graph, settings, stages=stages, family=family)
    if stages is None and settings.gpus <= graph.size:
        try:
            plan, seconds = make_plan(profile, profile_path, profile_sha256, settings, solver)
        except VpipeError:
            if not found.feasible:
                raise
        else:
            if not found.feasible or _slowest(plan) <= found.bottleneck_ms * (1 + TIE):
                kept = dataclasses.replace(plan, notes=(*plan.notes, _replicas_note(plan, found)))
                return kept, seconds + found.seconds
    if not found.feasible:
        raise VpipeError(
            f"no plan of {stages or 'any number of'} stages on {settings.gpus} processes fits "
            "--memory, even recomputing; raise --memory, or give more --gpus or --stages"
        )
    straight = solve_hybrid(graph, settings, replicate=False, family=family)
    return _hybrid_plan(profile, profile_path, profile_sha256, settings, graph, found, straight), (
        found.seconds + straight.seconds
    )


def _replicas_note(plan: Plan, found: HybridSplit) -> str:
    """Why a plan free to use data-parallel replicas has none: what the best with them does."""
    if not found.feasible:
        return "no replicas: no plan with data-parallel replicas fits --memory"
    if all(r == 1 for r in found.replicas):
        return "no replicas: no plan that replicates a stage is faster here and fits --memory"
    shape = " ".join(str(r) for r in found.replicas)
    return (
        f"no replicas: the fastest plan with them ({len(found.replicas)} stages, replicas "
        f"{shape}) is no faster: its slowest stage takes {found.bottleneck_ms:.3f} ms, this "
        f"plan's {_slowest(plan):.3f}"
    )


def _slowest(plan: Plan) -> float:
    return max(stage.predicted.time_ms for stage in plan.stages)


def _hybrid_plan(
    profile: Profile,
    profile_path: str,
    profile_sha256: str,
    settings: PlanSettings,
    graph: PlanGraph,
    found: HybridSplit,
    straight: HybridSplit,
) -> Plan:
    predictions: list[StagePrediction] = []
    before: list[int] = []
    chosen = zip(found.stages, found.recompute, found.predicted, strict=True)
    for index, (stage, recompute, replicated) in enumerate(chosen):
        one = evaluate_stage(graph, settings, index, before, stage, recompute)
        predictions.append(
            dataclasses.replace(
                one,
                time_ms=replicated.time_ms,
                memory=replicated.memory,
                allreduce_ms=replicated.allreduce_ms,
            )
        )
        before += stage
    names = graph.names
    batch_size = profile.batch_size
    predicted = predict_replicated_pipeline(
        graph, settings, batch_size, found.stages, found.replicas, predictions
    )
    straight_baselines = []
    if straight.feasible:
        straight_predictions = predict_stages(
            graph,
            dataclasses.replace(settings, gpus=len(straight.stages)),
            straight.stages,
            [() for _ in straight.stages],
        )
        straight_baselines.append(
            Baseline(
                name=f"best straight ({len(straight.stages)} stages, no replicas)",
                stage_sizes=tuple(sum(n != graph.loss for n in s) for s in straight.stages),
                time_per_minibatch_ms=predict_replicated_pipeline(
                    graph,
                    settings,
                    batch_size,
                    straight.stages,
                    straight.replicas,
                    straight_predictions,
                ).time_per_minibatch_ms,
                fits=True,
            )
        )
    return Plan(
        profile=profile_path,
        profile_sha256=profile_sha256,
        batch_size=batch_size,
        settings=settings,
        stages=tuple(
            Stage(
                index=k,
                nodes=tuple(names[n] for n in stage if n != graph.loss),
                recompute=tuple(names[n] for n in recompute),
                replicas=r,
                predicted=prediction,
            )
            for k, (stage, recompute, r, prediction) in enumerate(
                zip(found.stages, found.recompute, found.replicas, predictions, strict=True)
            )
        ),
        predicted=predicted,
        baselines=tuple(straight_baselines),
        solver=SolverInfo(
            name="hybrid",
            optimal=found.optimal,
            lower_bound_ms=found.lower_bound_ms if found.cuts == "all" else 0.0,
            cuts=found.cuts,
        ),
        notes=graph.notes,
        ties=planned_ties(graph, found.stages),
    )


@dataclasses.dataclass(frozen=True)
class Replanned:
    """A running plan against the best plan for its devices' measured speeds."""

    current_ms: float  # the running plan's slowest stage at those speeds
    plan: Plan  # the best plan for them (its prediction is `planned_ms`)

    @property
    def planned_ms(self) -> float:
        return max(stage.predicted.time_ms for stage in self.plan.stages)


def replan_for_speeds(
    plan: Plan, profile: Profile, profile_path: str, profile_sha256: str, speeds: Sequence[float]
) -> Replanned:
    """`plan` re-costed with stage index k's device `speeds[k]` times as slow as the profiled
    one, and the plan the dp finds for those speeds, under `plan`'s other settings (the same
    stages, memory and schedule): what `vpipe-train --adapt` weighs before it switches."""
    settings = dataclasses.replace(plan.settings, stage_speeds=tuple(speeds))
    graph = graph_for(profile, settings)
    index = {name: n for n, name in enumerate(graph.names)}
    stages = [[index[name] for name in stage.nodes] for stage in plan.stages]
    recompute = [[index[name] for name in stage.recompute] for stage in plan.stages]
    current = max(p.time_ms for p in predict_stages(graph, settings, stages, recompute))
    best, _ = make_plan(profile, profile_path, profile_sha256, settings, "dp")
    return Replanned(current, best)
