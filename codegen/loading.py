"""Load generated stages back: the runtime builds one per process, tests chain them all."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from vpipe.codegen.ownership import build_stage
from vpipe.codegen.schema import Pipeline, load_pipeline
from vpipe.common.errors import VpipeError
from vpipe.common.modelfile import load_model_file


def load_stage(
    directory: str | Path, pipeline: Pipeline, index: int, device: torch.device | str = "cpu"
) -> nn.Module:
    """Stage `index` of the pipeline in `directory`, holding only its own weights."""
    directory = Path(directory)
    spec = pipeline.stages[index]
    file, _, class_name = spec.module.partition(":")
    path = directory / file
    if not path.is_file():
        raise VpipeError(f"{path} is missing; regenerate with vpipe-gen")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    name = f"vpipe_stage_{digest}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    model_file = load_model_file(pipeline.model)
    return build_stage(
        getattr(module, class_name), model_file.build_model, directory / spec.weights, device
    )


def load_all(directory: str | Path) -> tuple[Pipeline, list[nn.Module]]:
    """The pipeline config and every stage, on the CPU (for tests and single-process checks)."""
    pipeline = load_pipeline(Path(directory) / "pipeline.yaml")
    return pipeline, [load_stage(directory, pipeline, k) for k in range(len(pipeline.stages))]


def forward_in_order(
    pipeline: Pipeline, stages: Sequence[nn.Module], batch: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...]:
    """Run the stages one after another in one process: what the pipeline computes."""
    sent: tuple[torch.Tensor, ...] = ()
    for spec, stage in zip(pipeline.stages, stages, strict=True):
        sent = stage(*(batch[i] for i in spec.batch_inputs), *sent)
    return sent
