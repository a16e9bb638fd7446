"""Synchronous schedules on real gloo processes equal single-process gradient accumulation."""

import csv
from pathlib import Path

import pytest
import torch

from vpipe.codegen.schema import load_pipeline
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import QUICK_PROFILE, generate, plan, profile
from .references import LR, single_process

MICROBATCHES = 3
STEPS = 3


@pytest.fixture(scope="module")
def gpt_profile(tmp_path_factory):
    return profile("gpt", tmp_path_factory.mktemp("gpt"), batch_size=2)


@pytest.mark.parametrize(
    ("schedule", "stages", "recompute"),
    [
        ("1f1b", 2, False),
        ("gpipe", 2, False),
        ("1f1b", 4, False),
        ("gpipe", 4, False),
        ("1f1b", 2, True),  # recomputed segments must see the weights their forward used
        ("gpipe", 4, True),
    ],
)
def test_pipeline_equals_single_process(gpt_profile, tmp_path, stages, schedule, recompute):
    argv = ["--schedule", schedule, "--microbatches", str(MICROBATCHES)]
    out = generate(plan(gpt_profile, stages, tmp_path, recompute, *argv), tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS), "--lr", str(LR)]
    assert train_main([*argv, "--optimizer", "momentum", "--threads", "1"]) == 0
    pipeline = load_pipeline(out / "pipeline.yaml")
    expected, losses = single_process(pipeline, STEPS)
    seen = set()
    for k in range(stages):
        for name, tensor in torch.load(out / "run" / f"final_stage_{k}.pt").items():
            torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
            seen.add(name)
    assert seen == set(expected)
    with open(out / "run" / "metrics.csv") as file:
        logged = [float(row["loss"]) for row in csv.DictReader(file)]
    assert logged == pytest.approx(losses, rel=1e-5)


def test_parameters_sharing_one_gradient_object(tmp_path):
    """Two parameters whose gradients autograd returns as one tensor (fixtures/shared_gradient.py):
    summing a step's gradients in place into that tensor would add every micro-batch twice."""
    model = str(Path(__file__).parent / "fixtures" / "shared_gradient.py")
    profiled = tmp_path / "profile.yaml"
    argv = [model, "-o", str(profiled), *QUICK_PROFILE, "--batch-size", "4"]
    assert profile_main(argv) == 0
    argv = ["--schedule", "1f1b", "--microbatches", str(MICROBATCHES)]
    out = generate(plan(profiled, 1, tmp_path, False, *argv), tmp_path / "out")  # a, b together
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS), "--lr", str(LR)]
    assert train_main([*argv, "--optimizer", "momentum", "--threads", "1"]) == 0
    expected, _ = single_process(load_pipeline(out / "pipeline.yaml"), STEPS)
    for name, tensor in torch.load(out / "run" / "final_stage_0.pt").items():
        torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
