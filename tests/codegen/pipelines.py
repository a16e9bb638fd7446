"""Profile, plan and generate bundled models for the codegen tests (real commands, no mocks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from vpipe.codegen.cli import main as generate_main
from vpipe.codegen.schema import Pipeline, load_pipeline
from vpipe.common.stages import load_stage
from vpipe.planner.cli import main as plan_main
from vpipe.planner.schema import load_plan, save_plan
from vpipe.profiler.cli import main as profile_main

MODELS = ("gpt", "bert", "resnet", "vgg", "mlp")
# vpipe-profile's options for a test: on the CPU, one timed run of everything, no warm-up and no
# least time; the tests check what a profile holds, not how precise its times are
QUICK_PROFILE = ["-q", "--device", "cpu", "--repeats", "1", "--min-time", "0", "--warmup", "0"]


def straight(stages: int) -> list[str]:
    """vpipe-plan's options for a straight pipeline: `stages` stages on as many processes
    (without --stages the planner may give stages data-parallel replicas instead)."""
    return ["--gpus", str(stages), "--stages", str(stages)]


def profile(model: str, directory: Path, batch_size: int = 4, device: str = "cpu") -> Path:
    """`model`: a bundled model's name, or a model file's path."""
    source = model if model.endswith(".py") else f"vpipe.models.{model}"
    path = directory / f"{Path(model).stem}.profile.yaml"
    argv = [source, "-o", str(path), *QUICK_PROFILE, "--device", device]
    argv += ["--batch-size", str(batch_size)]
    assert profile_main(argv) == 0
    return path


def plan(profile_path: Path, gpus: int, directory: Path, recompute: bool, *extra: str) -> Path:
    """A plan from vpipe-plan; with `recompute`, every stage also recomputes all but every third
    node: runs of two (more, and more awkward, segments than a memory cap would pick)."""
    path = directory / f"plan{gpus}{'r' if recompute else ''}.yaml"
    assert (
        plan_main(
            [
                str(profile_path),
                *straight(gpus),
                "-o",
                str(path),
                "-q",
                *extra,
            ]
        )
        == 0
    )
    if recompute:
        planned = load_plan(path)
        stages = tuple(
            dataclasses.replace(
                stage, recompute=tuple(n for i, n in enumerate(stage.nodes) if i % 3)
            )
            for stage in planned.stages
        )
        save_plan(dataclasses.replace(planned, stages=stages), path)
    return path


def generate(plan_path: Path, out: Path) -> Path:
    assert generate_main([str(plan_path), "-o", str(out), "-q"]) == 0
    return out


def load_all(directory: Path) -> tuple[Pipeline, list[nn.Module]]:
    """The pipeline config and every stage, on the CPU."""
    pipeline = load_pipeline(Path(directory) / "pipeline.yaml")
    stages = [load_stage(directory, s.module, s.weights, pipeline.model) for s in pipeline.stages]
    return pipeline, stages


def forward_in_order(pipeline: Pipeline, stages, batch) -> tuple[torch.Tensor, ...]:
    """Run the stages one after another in one process: what the pipeline computes."""
    sent: tuple[torch.Tensor, ...] = ()
    for spec, stage in zip(pipeline.stages, stages, strict=True):
        sent = stage(*(batch.input(key) for key in spec.batch_inputs), *sent)
    return sent
