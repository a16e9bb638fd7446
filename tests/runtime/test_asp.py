"""asp on real gloo processes equals a single-process replay with weight stashing."""

import csv
import dataclasses

import pytest
import torch

from vpipe.common.yamlfile import load_yaml
from vpipe.planner.schema import load_plan, save_plan
from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import generate, plan, profile
from .references import LR, clipped_optimizers, replay

STEPS = 8


@pytest.fixture(scope="module")
def gpt_profile(tmp_path_factory):
    return profile("gpt", tmp_path_factory.mktemp("gpt"), batch_size=2)


def even_split(path):
    """The same nodes in equal runs of the profile's order, so that early stages hold layers
    whose gradients depend on their own weights (where stashing matters). The planner's split
    of this small GPT puts little before its costly head."""
    planned = load_plan(path)
    order = [n for stage in planned.stages for n in stage.nodes]
    size = -(-len(order) // len(planned.stages))
    stages = tuple(
        dataclasses.replace(stage, nodes=tuple(order[k * size : (k + 1) * size]), recompute=())
        for k, stage in enumerate(planned.stages)
    )
    save_plan(dataclasses.replace(planned, stages=stages), path)
    return path


@pytest.mark.parametrize("stages", [2, 4])
def test_asp_equals_stashed_replay(gpt_profile, tmp_path, stages):
    out = generate(even_split(plan(gpt_profile, stages, tmp_path, False)), tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS), "--lr", str(LR)]
    assert train_main([*argv, "--optimizer", "sgd", "--schedule", "asp", "--threads", "1"]) == 0
    stashed, unstashed = replay(out, STEPS), replay(out, STEPS, stash=False)
    differs = False
    for k in range(stages):
        trained = torch.load(out / "run" / f"final_stage_{k}.pt")
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, stashed[k][name], rtol=1e-5, atol=1e-6)
            differs |= not torch.allclose(tensor, unstashed[k][name], rtol=1e-5, atol=1e-6)
        # weight versions alive on stage k, measured by the run: never more than S - k
        peak = load_yaml(out / "run" / f"stage_{k}.yaml", "run")["peak_weight_versions"]
        assert peak <= stages - k
    assert differs  # without stashing, the same schedule computes something else


def test_asp_adamw_with_clipping_equals_stashed_replay(gpt_profile, tmp_path, one_thread):
    """AdamW and per-stage clipping under asp: the run equals the stashed replay with
    torch.optim.AdamW and clip_grad_norm_ per stage, and its loss falls."""
    steps, lr, max_norm = 24, 3e-3, 0.2
    out = generate(even_split(plan(gpt_profile, 2, tmp_path, False)), tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--schedule", "asp"]
    argv += ["--optimizer", "adamw", "--lr", str(lr), "--weight-decay", "0.1", "--threads", "1"]
    assert train_main([*argv, "--clip-grad-norm", str(max_norm)]) == 0
    norms = []
    adamw = clipped_optimizers(
        lambda params: torch.optim.AdamW(params, lr=lr, weight_decay=0.1), max_norm, norms
    )
    stashed = replay(out, steps, update=adamw)
    assert sum(n > max_norm for n in norms) > len(norms) / 2  # most updates were clipped
    for k in range(2):
        trained = torch.load(out / "run" / f"final_stage_{k}.pt")
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, stashed[k][name], rtol=1e-5, atol=1e-6)
    with open(out / "run" / "metrics.csv") as file:
        losses = [float(row["loss"]) for row in csv.DictReader(file)]
    assert sum(losses[-4:]) < sum(losses[:4]) - 0.1  # the mean of 4 fell by more than 0.025
