"""out/pipeline.yaml: what `vpipe-gen` writes and the runtime reads.

Frozen records with `to_dict`/`from_dict`; dictionaries exist only at the YAML edge. Shapes are
per micro-batch, the shapes the runtime sends and receives. No torch here, so the file can be
checked anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpipe.common.errors import VpipeError
from vpipe.common.optimizers import OPTIMIZERS
from vpipe.common.paths import recorded_model, resolved_model
from vpipe.common.records import Count, Positive, decode
from vpipe.common.schedules import SCHEDULES
from vpipe.common.yamlfile import check_header, load_yaml, plain, save_yaml
from vpipe.planner.schema import Prediction, StagePrediction

# 2: batch inputs by key, the output's structure; 3: stage files' sha256; 4: stages' nodes;
# 5: the predicted all-reduce time (stages may have several ranks: data-parallel replicas);
# 6: each stage's predicted delay of its messages (planner/schema.py's StagePrediction)
SCHEMA_VERSION = 6


@dataclass(frozen=True)
class TensorSpec:
    """A tensor a stage takes or gives, by its graph node's name."""

    name: str
    shape: tuple[Count, ...]
    dtype: str  # torch dtype name without "torch.", e.g. float32


@dataclass(frozen=True)
class StageSpec:
    index: Count
    module: str  # "stage_<k>.py:Stage<k>", relative to the pipeline file
    # the stage file as vpipe-gen wrote it: an error raised in an edited one is the editor's
    module_sha256: str
    weights: str  # initial values of the parameters and buffers it owns
    nodes: tuple[str, ...]  # the plan's nodes on this stage, in the profile's order
    ranks: tuple[Count, ...]  # processes that run it (one per stage today)
    batch_inputs: tuple[str, ...]  # keys of make_batch's inputs it reads itself ("0", "input_ids")
    inputs: tuple[TensorSpec, ...]  # forward's arguments: batch inputs, then stage k-1's
    outputs: tuple[TensorSpec, ...]  # what forward returns: to stage k+1, or the model outputs
    recompute: tuple[tuple[str, ...], ...]  # checkpoint segments, as node names
    parameters: tuple[str, ...]  # names as in the original model's state_dict
    predicted: StagePrediction


@dataclass(frozen=True)
class TiedParameter:
    """One parameter used by several stages: each holds a copy, the runtime keeps them equal."""

    names: tuple[str, ...]  # every name it has in the original model
    stages: tuple[Count, ...]


@dataclass(frozen=True)
class Pipeline:
    plan: str  # path of the plan, relative to the pipeline file (in memory too)
    plan_sha256: str
    model: str  # model file (on disk: relative to the pipeline file) or module name
    model_sha256: str | None
    seed: int
    leaves: tuple[str, ...]
    batch_size: Positive  # per micro-batch: the profile's batch size
    microbatches: Positive  # per optimizer step under 1f1b and gpipe (1 under asp)
    schedule: str
    optimizer: str
    # the model's output structure (a tensor, tuple, dict, ModelOutput: torch's pytree spec as
    # JSON) over the last stage's outputs picked in this order: the loss gets what the model gives
    output_spec: str
    output_leaves: tuple[str, ...]
    stages: tuple[StageSpec, ...]
    tied: tuple[TiedParameter, ...]
    predicted: Prediction
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = plain(self)
        return {"schema_version": data.pop("schema_version"), **data}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "pipeline") -> Pipeline:
        check_header(
            data,
            SCHEMA_VERSION,
            where,
            "pipeline file",
            "regenerate it with this vpipe: vpipe-gen plan.yaml -o <dir>",
        )
        body = {k: v for k, v in data.items() if k != "schema_version"}
        pipeline = decode(cls, body, where, "pipeline file", "regenerate it with vpipe-gen")
        for position, stage in enumerate(pipeline.stages):
            if stage.index != position:
                raise VpipeError(f"{where}: stage {position} is numbered {stage.index}")
        for name, value, known in (
            ("schedule", pipeline.schedule, SCHEDULES),
            ("optimizer", pipeline.optimizer, OPTIMIZERS),
        ):
            if value not in known:
                raise VpipeError(
                    f"{where}: {name} {value!r} is not one of {', '.join(known)}; regenerate it "
                    "with vpipe-gen"
                )
        return pipeline


def save_pipeline(pipeline: Pipeline, path: str | Path) -> None:
    """Write pipeline.yaml; its `model`, a file, relative to its directory."""
    save_yaml({**pipeline.to_dict(), "model": recorded_model(pipeline.model, path)}, path)


def load_pipeline(path: str | Path) -> Pipeline:
    """Read and validate out/pipeline.yaml; its `model`, a file, as seen from here."""
    data = load_yaml(path, "pipeline")
    if isinstance(data, dict) and isinstance(data.get("model"), str):
        data["model"] = resolved_model(data["model"], path)
    return Pipeline.from_dict(data, where=str(path))
