"""The plan file: what `vpipe-plan` writes and the code generator reads.

Frozen records with `to_dict`/`from_dict`; dictionaries exist only at the YAML edge. Pure Python
(no torch), like everything in the planner. See docs/planner.md for the model behind the
predicted figures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpipe.common.errors import VpipeError
from vpipe.common.optimizers import OPTIMIZER_STATE_FACTOR
from vpipe.common.paths import recorded_path, resolved_path
from vpipe.common.records import Bytes, Count, Limit, Millis, NonNegative, Positive, decode
from vpipe.common.schedules import SCHEDULES
from vpipe.common.yamlfile import check_header, load_yaml, plain, save_yaml

# 2: ties; 3: replicas per stage, all-reduce time; 4: stage speeds; 5: the runtime's message cost;
# 6: a message's latency (settings) and each cut's one-way delay (stage predictions)
# 7: how much action times vary (settings.jitter)
SCHEMA_VERSION = 7
RECOMPUTE = ("auto", "never", "all")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes one stage needs on its device, by kind."""

    params: Bytes  # the live weights (and buffers)
    stash: Bytes  # older weight versions kept for in-flight mini-batches (asp only)
    grads: Bytes
    optimizer: Bytes
    activations: Bytes  # in-flight micro-batches x (kept tensors, sent ones too + received inputs)
    transient: Bytes  # the largest checkpoint segment rebuilt + the backward's own peak
    buffers: Bytes = 0  # the links': receives posted ahead, sends not yet waited on

    @property
    def total(self) -> int:
        return (
            self.params
            + self.stash
            + self.grads
            + self.optimizer
            + self.activations
            + self.transient
            + self.buffers
        )


@dataclass(frozen=True)
class StagePrediction:
    """What the cost model predicts for one stage, per micro-batch (mini-batch under asp)."""

    compute_ms: Millis  # forward + backward + recomputed forward + transfers' CPU work
    recompute_ms: Millis  # the part of compute_ms spent recomputing
    comm_in_ms: Millis  # receive activations + send their gradients back
    comm_out_ms: Millis  # send activations + receive their gradients
    time_ms: Millis  # max(compute, comm_in, comm_out): communication overlaps compute
    memory: MemoryBreakdown
    # the part of compute_ms the stage's process spends moving its tensors (on a CPU, gloo
    # copies on the cores that compute: the profile's link cost)
    transfer_ms: Millis
    # with data-parallel replicas: one all-reduce of the stage's gradients among them (0 with
    # one); time_ms is then the replicas' shared time, (max(compute + this, comm)) / replicas
    allreduce_ms: Millis
    # one way, from the end of the action that sends the tensors of the cut after this stage to
    # when the next stage can use them (`costmodel.message_delay_ms`; 0 for the last stage)
    delay_ms: Millis


@dataclass(frozen=True)
class Stage:
    index: Count
    nodes: tuple[str, ...]  # profile node names, in the profile's (topological) order
    recompute: tuple[str, ...]  # nodes recomputed in backward; each run becomes one segment
    replicas: Positive  # data-parallel processes running it, sharing its micro-batches
    predicted: StagePrediction  # memory: of one replica


@dataclass(frozen=True)
class Prediction:
    time_per_minibatch_ms: Millis  # asp: the bottleneck stage; sync: the simulated iteration
    throughput_samples_per_s: NonNegative
    bottleneck_stage: Count
    bubble_fraction: NonNegative  # idle share of stage time in the simulated schedule (0 under asp)


@dataclass(frozen=True)
class Baseline:
    """A split users make today, costed with the same model (recompute off)."""

    name: str
    stage_sizes: tuple[Positive, ...]  # nodes per stage
    time_per_minibatch_ms: Millis
    fits: bool  # whether every stage fits the memory cap without recompute


@dataclass(frozen=True)
class SolverInfo:
    name: str  # exact | dp | ilp (solve time is printed, not stored: same input, same file)
    optimal: bool  # proven optimal for the model; false: best found, see lower_bound_ms
    lower_bound_ms: Millis  # on the bottleneck stage time; equals it when optimal
    cuts: str  # "all" (every DAG cut) or how the candidate cuts were restricted


@dataclass(frozen=True)
class PlannedTie:
    """A parameter several nodes use (tied weights), and the stages that hold a copy of it:
    one stage holds it once; several keep their copies equal by summing their gradients
    (runtime/tied.py)."""

    names: tuple[str, ...]  # its qualified names in the model
    stages: tuple[Count, ...]  # ascending; the first is the owner under asp


@dataclass(frozen=True)
class PlanSettings:
    gpus: int
    memory_bytes: Limit  # usable per device, after headroom; math.inf for no limit
    bandwidth_gbps: Limit  # GB/s (1e9 bytes); math.inf for free communication
    schedule: str = "asp"
    microbatches: int = 1
    optimizer: str = "sgd"
    headroom: NonNegative = 0.1  # share of --memory kept free for the allocator and the framework
    recompute: str = "auto"  # auto: chosen per stage; never; all: every stage, whole forward
    # per stage index, how much longer its device computes than the profile's (1.0: as
    # profiled; () all 1.0): measured speeds when a running pipeline re-plans (`--adapt`)
    stage_speeds: tuple[float, ...] = ()
    # CPU milliseconds each end of a cut spends per message, as `vpipe-probe` measures it in
    # the runtime (None: the profile's link cost, measured between two threads)
    message_ms: float | None = None
    # how long a message takes from its send to its receive, beyond its copies, as `vpipe-probe`
    # measures it in the runtime (None: the receiving end's share of the per-message cost)
    latency_ms: float | None = None
    # how much a stage's action times vary from one micro-batch to the next on this machine:
    # the standard deviation of their logarithm, as `vpipe-probe` measures it in the runtime
    # (0: every action at its mean; planner/jitter.py)
    jitter: float = 0.0

    def speed(self, stage: int) -> float:
        return self.stage_speeds[stage] if self.stage_speeds else 1.0

    def __post_init__(self) -> None:
        if self.recompute not in RECOMPUTE:
            raise VpipeError(f"--recompute {self.recompute}: use one of {', '.join(RECOMPUTE)}")
        if not 0 <= self.headroom < 1:
            raise VpipeError(f"--headroom must be in [0, 1) (got {self.headroom})")
        if self.gpus < 1:
            raise VpipeError(f"--gpus must be at least 1 (got {self.gpus})")
        if self.schedule not in SCHEDULES:
            raise VpipeError(f"--schedule {self.schedule}: use one of {', '.join(SCHEDULES)}")
        if self.optimizer not in OPTIMIZER_STATE_FACTOR:
            known = ", ".join(OPTIMIZER_STATE_FACTOR)
            raise VpipeError(f"--optimizer {self.optimizer}: use one of {known}")
        if self.microbatches < 1:
            raise VpipeError(f"--microbatches must be at least 1 (got {self.microbatches})")
        if not self.memory_bytes > 0 or not self.bandwidth_gbps > 0:
            raise VpipeError("--memory and --bandwidth must be positive (or inf)")
        if self.message_ms is not None and not 0 <= self.message_ms < math.inf:
            raise VpipeError(f"--message-ms must be a finite number >= 0 (got {self.message_ms})")
        if self.latency_ms is not None and not 0 <= self.latency_ms < math.inf:
            raise VpipeError(f"--latency-ms must be a finite number >= 0 (got {self.latency_ms})")
        if not 0 <= self.jitter < math.inf:
            raise VpipeError(f"--jitter must be a finite number >= 0 (got {self.jitter})")
        if self.stage_speeds and (
            len(self.stage_speeds) != self.gpus
            or not all(0 < x < math.inf for x in self.stage_speeds)
        ):
            raise VpipeError(
                f"--stage-speeds: give one positive factor per stage ({self.gpus}), got "
                f"{' '.join(map(str, self.stage_speeds))}"
            )


@dataclass(frozen=True)
class Plan:
    profile: str  # the profile file; on disk relative to the plan's directory
    profile_sha256: str
    batch_size: Positive | None
    settings: PlanSettings
    stages: tuple[Stage, ...]
    predicted: Prediction
    baselines: tuple[Baseline, ...]
    solver: SolverInfo
    notes: tuple[str, ...] = ()
    ties: tuple[PlannedTie, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        data = {"schema_version": data.pop("schema_version"), **data}
        for stage in data["stages"]:
            stage["predicted"]["memory"]["total"] = self.stages[
                stage["index"]
            ].predicted.memory.total
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "plan") -> Plan:
        check_header(
            data, SCHEMA_VERSION, where, "plan", "re-run vpipe-plan with this version of vpipe"
        )
        body = {k: v for k, v in data.items() if k != "schema_version"}
        for stage in body.get("stages", ()):  # `total` is written for people, not read
            if isinstance(stage, dict) and isinstance(stage.get("predicted"), dict):
                memory = stage["predicted"].get("memory")
                if isinstance(memory, dict):
                    memory.pop("total", None)
        plan = decode(cls, body, where, "plan", "re-run vpipe-plan")
        _validate(plan, where)
        return plan


def _validate(plan: Plan, where: str) -> None:
    processes = sum(stage.replicas for stage in plan.stages)
    if processes > plan.settings.gpus:
        raise VpipeError(f"{where}: {processes} processes for {plan.settings.gpus} gpus")
    seen: set[str] = set()
    for position, stage in enumerate(plan.stages):
        if stage.index != position:
            raise VpipeError(f"{where}: stage {position} is numbered {stage.index}")
        if not stage.nodes:
            raise VpipeError(f"{where}: stage {position} has no nodes")
        if seen & set(stage.nodes):
            again = ", ".join(n for n in stage.nodes if n in seen)
            raise VpipeError(
                f"{where}: stage {position} repeats nodes of an earlier stage: {again}"
            )
        seen |= set(stage.nodes)
        if not set(stage.recompute) <= set(stage.nodes):
            others = ", ".join(n for n in stage.recompute if n not in stage.nodes)
            raise VpipeError(
                f"{where}: stage {position} recomputes nodes it does not own: {others}"
            )
    for tie in plan.ties:
        stages = list(tie.stages)
        if (
            not stages
            or stages != sorted(set(stages))
            or not 0 <= stages[0] <= stages[-1] < len(plan.stages)
        ):
            raise VpipeError(
                f"{where}: tie {'/'.join(tie.names)} names stages {stages}: they must be "
                f"distinct stage numbers below {len(plan.stages)}, ascending"
            )


def save_plan(plan: Plan, path: str | Path) -> None:
    """Write a plan; its `profile` relative to the plan's directory."""
    save_yaml({**plan.to_dict(), "profile": recorded_path(plan.profile, path)}, path)


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; its `profile` as seen from here."""
    data = load_yaml(path, "plan")
    if isinstance(data, dict) and isinstance(data.get("profile"), str):
        data["profile"] = resolved_path(data["profile"], path)
    return Plan.from_dict(data, where=str(path))
