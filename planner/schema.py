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
from vpipe.common.paths import recorded_path, resolved_path
from vpipe.common.yamlfile import check_header, load_yaml, plain, save_yaml

SCHEMA_VERSION = 2  # 2: ties
SCHEDULES = ("asp", "1f1b", "gpipe")
RECOMPUTE = ("auto", "never", "all")


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes one stage needs on its device, by kind."""

    params: int  # the live weights (and buffers)
    stash: int  # older weight versions kept for in-flight mini-batches (asp only)
    grads: int
    optimizer: int
    activations: int  # in-flight micro-batches x (kept tensors, sent ones too + received inputs)
    transient: int  # the largest checkpoint segment rebuilt + the backward's own peak
    buffers: int = 0  # the links': receives posted ahead, sends not yet waited on

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

    compute_ms: float  # forward + backward + recomputed forward + transfers' CPU work
    recompute_ms: float  # the part of compute_ms spent recomputing
    comm_in_ms: float  # receive activations + send their gradients back
    comm_out_ms: float  # send activations + receive their gradients
    time_ms: float  # max(compute, comm_in, comm_out): communication overlaps compute
    memory: MemoryBreakdown
    # the part of compute_ms the stage's process spends moving its tensors (on a CPU, gloo
    # copies on the cores that compute: the profile's link cost)
    transfer_ms: float = 0.0


@dataclass(frozen=True)
class Stage:
    index: int
    nodes: tuple[str, ...]  # profile node names, in the profile's (topological) order
    recompute: tuple[str, ...]  # nodes recomputed in backward; each run becomes one segment
    predicted: StagePrediction


@dataclass(frozen=True)
class Prediction:
    time_per_minibatch_ms: float  # asp: the bottleneck stage; sync: the simulated iteration
    throughput_samples_per_s: float
    bottleneck_stage: int
    bubble_fraction: float  # idle share of stage time in the simulated schedule (0 under asp)


@dataclass(frozen=True)
class Baseline:
    """A split users make today, costed with the same model (recompute off)."""

    name: str
    stage_sizes: tuple[int, ...]  # nodes per stage
    time_per_minibatch_ms: float
    fits: bool  # whether every stage fits the memory cap without recompute


@dataclass(frozen=True)
class SolverInfo:
    name: str  # dp | ilp (solve time is printed, not stored: same input, same file)
    optimal: bool  # proven optimal for the model; false: best found, see lower_bound_ms
    lower_bound_ms: float  # on the bottleneck stage time; equals it when optimal
    cuts: str  # "all" (every DAG cut) or how the candidate cuts were restricted


@dataclass(frozen=True)
class PlannedTie:
    """A parameter several nodes use (tied weights), and the stages that hold a copy of it:
    one stage holds it once; several keep their copies equal by summing their gradients
    (runtime/tied.py)."""

    names: tuple[str, ...]  # its qualified names in the model
    stages: tuple[int, ...]  # ascending; the first is the owner under asp


@dataclass(frozen=True)
class PlanSettings:
    gpus: int
    memory_bytes: float  # usable per device, after headroom; math.inf for no limit
    bandwidth_gbps: float  # GB/s (1e9 bytes); math.inf for free communication
    schedule: str = "asp"
    microbatches: int = 1
    optimizer: str = "sgd"
    headroom: float = 0.1  # share of --memory kept free for the allocator and the framework
    recompute: str = "auto"  # auto: chosen per stage; never; all: every stage, whole forward

    def __post_init__(self) -> None:
        if self.recompute not in RECOMPUTE:
            raise VpipeError(f"--recompute {self.recompute}: use one of {', '.join(RECOMPUTE)}")
        if not 0 <= self.headroom < 1:
            raise VpipeError(f"--headroom must be in [0, 1) (got {self.headroom})")
        if self.gpus < 1:
            raise VpipeError(f"--gpus must be at least 1 (got {self.gpus})")
        if self.schedule not in SCHEDULES:
            raise VpipeError(f"--schedule {self.schedule}: use one of {', '.join(SCHEDULES)}")
        if self.microbatches < 1:
            raise VpipeError(f"--microbatches must be at least 1 (got {self.microbatches})")
        if not self.memory_bytes > 0 or not self.bandwidth_gbps > 0:
            raise VpipeError("--memory and --bandwidth must be positive (or inf)")


@dataclass(frozen=True)
class Plan:
    profile: str  # the profile file; on disk relative to the plan's directory
    profile_sha256: str
    batch_size: int | None
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
        try:
            stages = tuple(
                Stage(
                    index=s["index"],
                    nodes=tuple(s["nodes"]),
                    recompute=tuple(s["recompute"]),
                    predicted=_prediction(s["predicted"]),
                )
                for s in data["stages"]
            )
            plan = cls(
                profile=data["profile"],
                profile_sha256=data["profile_sha256"],
                batch_size=data["batch_size"],
                settings=PlanSettings(**_floats(data["settings"])),
                stages=stages,
                predicted=Prediction(**data["predicted"]),
                baselines=tuple(
                    Baseline(**{**b, "stage_sizes": tuple(b["stage_sizes"])})
                    for b in data["baselines"]
                ),
                solver=SolverInfo(**data["solver"]),
                notes=tuple(data.get("notes", ())),
                ties=tuple(PlannedTie(tuple(t["names"]), tuple(t["stages"])) for t in data["ties"]),
            )
        except VpipeError as err:
            raise VpipeError(f"{where}: {err}") from None
        except (TypeError, KeyError, ValueError, AttributeError) as err:
            raise VpipeError(
                f"{where}: malformed plan ({type(err).__name__}: {err}); re-run vpipe-plan"
            ) from None
        _validate(plan, where)
        return plan


def _prediction(data: Mapping[str, Any]) -> StagePrediction:
    memory = {k: v for k, v in data["memory"].items() if k != "total"}
    return StagePrediction(**{**data, "memory": MemoryBreakdown(**memory)})


def _floats(settings: Mapping[str, Any]) -> dict[str, Any]:
    """YAML has no infinity literal that every reader agrees on: inf is written as the string."""
    return {k: math.inf if v == "inf" else v for k, v in settings.items()}


def _validate(plan: Plan, where: str) -> None:
    if len(plan.stages) != plan.settings.gpus:
        raise VpipeError(f"{where}: {len(plan.stages)} stages for {plan.settings.gpus} gpus")
    seen: set[str] = set()
    for position, stage in enumerate(plan.stages):
        if stage.index != position:
            raise VpipeError(f"{where}: stage {position} is numbered {stage.index}")
        if not stage.nodes:
            raise VpipeError(f"{where}: stage {position} has no nodes")
        if seen & set(stage.nodes):
            raise VpipeError(f"{where}: stage {position} repeats nodes of an earlier stage")
        seen |= set(stage.nodes)
        if not set(stage.recompute) <= set(stage.nodes):
            raise VpipeError(f"{where}: stage {position} recomputes nodes it does not own")
        predicted = stage.predicted
        for field in ("compute_ms", "recompute_ms", "comm_in_ms", "comm_out_ms", "time_ms"):
            value = getattr(predicted, field)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise VpipeError(
                    f"{where}: stage {position}'s predicted {field} is {value!r}, not a finite "
                    "number of at least 0; re-run vpipe-plan"
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
