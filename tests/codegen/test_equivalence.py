"""Generated stages, chained in order, compute exactly what the original model computes."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vpipe.common.modelfile import load_model_file
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main

from .pipelines import MODELS, forward_in_order, generate, load_all, plan, profile, straight


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    directory = tmp_path_factory.mktemp("profiles")
    return {model: profile(model, directory) for model in MODELS}


@pytest.mark.parametrize("recompute", [False, True], ids=["plain", "recompute"])
@pytest.mark.parametrize("gpus", [2, 3, 4])
@pytest.mark.parametrize("model", MODELS)
def test_stages_equal_the_model(model, gpus, recompute, profiles, tmp_path):
    out = generate(plan(profiles[model], gpus, tmp_path, recompute), tmp_path / "out")
    pipeline, stages = load_all(out)
    assert bool(any(s.recompute for s in pipeline.stages)) == recompute
    model_file = load_model_file(pipeline.model)
    torch.manual_seed(pipeline.seed)
    reference = model_file.build_model()
    batch = model_file.batch(pipeline.batch_size, 3)

    torch.manual_seed(1)
    expected = batch.call(reference)
    torch.manual_seed(1)
    (output,) = forward_in_order(pipeline, stages, batch)
    assert torch.equal(output, expected)

    model_file.loss_fn(expected, batch.target).backward()
    model_file.loss_fn(output, batch.target).backward()
    original = dict(reference.named_parameters())
    seen = set()
    for stage in stages:
        for name, parameter in stage.named_parameters():
            torch.testing.assert_close(parameter.grad, original[name].grad, msg=name)
            seen.add(name)
    assert seen == set(original)  # every parameter is owned by some stage
    ruff = Path(sys.executable).parent / "ruff"
    files = sorted(str(f) for f in out.glob("stage_*.py"))
    lint = subprocess.run([ruff, "check", "--isolated", *files], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout


def test_a_sequential_model(tmp_path):
    """A bare nn.Sequential: fx names its forward's argument `input`, a builtin's name, which the
    generated stage must not read in place of the argument."""
    fixture = Path(__file__).parents[1] / "runtime" / "fixtures" / "dropout_mlp.py"
    profiled, planned = tmp_path / "profile.yaml", tmp_path / "plan.yaml"
    quick = ["-q", "--repeats", "1", "--min-time", "0"]  # on the default device
    assert profile_main([str(fixture), "-o", str(profiled), *quick]) == 0
    assert plan_main([str(profiled), *straight(3), "-o", str(planned), "-q"]) == 0
    pipeline, stages = load_all(generate(planned, tmp_path / "out"))
    model_file = load_model_file(pipeline.model)
    torch.manual_seed(pipeline.seed)
    reference = model_file.build_model()
    batch = model_file.batch(pipeline.batch_size, 0)
    torch.manual_seed(1)
    expected = batch.call(reference)
    torch.manual_seed(1)
    assert torch.equal(forward_in_order(pipeline, stages, batch)[0], expected)
