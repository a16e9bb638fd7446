"""What each stage receives, computes and sends, from a plan's node sets (pure, no torch).

Values only travel between neighbouring stages: a tensor made on stage j and read on stage
m > j + 1 is received and sent on by every stage between them (a skip connection passes
through). That is exactly what the planner costs: each cut carries every tensor that crosses it,
once. A model input (placeholder) is read from the batch by the stage that owns its node.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from vpipe.common.errors import VpipeError
from vpipe.planner.schema import Plan
from vpipe.profiler.schema import Profile


@dataclass(frozen=True)
class StageFlow:
    """One stage's values, in the profile's (topological) order."""

    index: int
    nodes: tuple[str, ...]
    batch_inputs: tuple[str, ...]  # placeholders this stage owns: read from the batch
    received: tuple[str, ...]  # from stage index - 1
    sent: tuple[str, ...]  # to stage index + 1 (the last stage: the model's outputs)
    segments: tuple[tuple[str, ...], ...]  # runs of recomputed nodes, one checkpoint each

    @property
    def inputs(self) -> tuple[str, ...]:
        """The stage's forward arguments: batch inputs first, then received values."""
        return self.batch_inputs + self.received


def partition(profile: Profile, plan: Plan) -> tuple[StageFlow, ...]:
    """Each stage's flow; VpipeError if the plan is not a valid split of this profile."""
    stage_of = _stage_of(profile, plan)
    last = len(plan.stages) - 1
    position = {node.name: i for i, node in enumerate(profile.nodes)}

    def in_order(names: Iterable[str]) -> tuple[str, ...]:
        """`names` in the profile's (topological) order: the order a stage runs and sends."""
        return tuple(sorted(names, key=position.__getitem__))

    # the last stage that reads each value (the loss, on the last stage, reads the outputs)
    last_reader = {node.name: stage_of[node.name] for node in profile.nodes}
    for node in profile.nodes:
        for source in node.inputs:
            if stage_of[source] > stage_of[node.name]:
                raise VpipeError(
                    f"plan: node {node.name!r} on stage {stage_of[node.name]} reads "
                    f"{source!r} from the later stage {stage_of[source]}; a split must send "
                    "values forward only: re-run vpipe-plan"
                )
            last_reader[source] = max(last_reader[source], stage_of[node.name])
    for name in profile.outputs:
        last_reader[name] = last
    flows = []
    for stage in plan.stages:
        k = stage.index
        received = in_order(n for n in last_reader if stage_of[n] < k <= last_reader[n])
        sent = (
            tuple(profile.outputs)
            if k == last
            else in_order(n for n in last_reader if stage_of[n] <= k < last_reader[n])
        )
        nodes = in_order(stage.nodes)
        flows.append(
            StageFlow(
                index=k,
                nodes=nodes,
                batch_inputs=tuple(n for n in stage.nodes if profile.node(n).op == "placeholder"),
                received=received,
                sent=sent,
                segments=_segments(nodes, set(stage.recompute)),
            )
        )
    return tuple(flows)


def _stage_of(profile: Profile, plan: Plan) -> dict[str, int]:
    stage_of: dict[str, int] = {}
    for stage in plan.stages:
        for name in stage.nodes:
            stage_of[name] = stage.index
    names = [node.name for node in profile.nodes]
    unknown = sorted(set(stage_of) - set(names))
    missing = [n for n in names if n not in stage_of]
    if unknown or missing:
        problem = (
            f"names nodes the profile does not have: {', '.join(unknown[:5])}"
            if unknown
            else f"places no stage on nodes {', '.join(missing[:5])}"
        )
        raise VpipeError(f"plan {problem}; it does not belong to this profile: re-run vpipe-plan")
    return stage_of


def _segments(nodes: Sequence[str], recompute: set[str]) -> tuple[tuple[str, ...], ...]:
    """Maximal runs of recomputed nodes in the stage's order: the planner's checkpoint segments."""
    runs: list[list[str]] = []
    open_run = False
    for name in nodes:
        if name in recompute:
            if not open_run:
                runs.append([])
            runs[-1].append(name)
        open_run = name in recompute
    return tuple(tuple(run) for run in runs)
