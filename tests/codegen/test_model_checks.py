"""Tied parameters are named, not silently duplicated (a changed model is refused:
tests/test_bad_inputs.py)."""

import shutil
from pathlib import Path

import pytest
import torch

from vpipe.codegen.cli import main as generate_main
from vpipe.common.modelfile import load_model_file
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main

from .pipelines import QUICK_PROFILE, forward_in_order, load_all

FIXTURE = Path(__file__).parent / "fixtures" / "tied.py"


@pytest.fixture
def tied_plan(tmp_path, monkeypatch):
    """The tied model, copied (so tests may edit it), profiled and planned for 2 stages."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(FIXTURE, tmp_path / "tied.py")
    assert profile_main(["tied.py", "-o", "profile.yaml", *QUICK_PROFILE]) == 0
    argv = ["profile.yaml", "--gpus", "2", "-o", "plan.yaml", "-q", "--split", "uniform"]
    assert plan_main(argv) == 0  # uniform: the embedding and the head on different stages
    return tmp_path / "plan.yaml"


def test_tied_parameter_named_and_gradients_add_up(tied_plan, tmp_path, capsys):
    assert generate_main([str(tied_plan), "-o", "out"]) == 0
    assert "tied parameters: embed.weight/head.weight" in capsys.readouterr().out
    pipeline, stages = load_all(tmp_path / "out")
    (tied,) = pipeline.tied
    assert tied.names == ("embed.weight", "head.weight") and tied.stages == (0, 1)

    model_file = load_model_file(pipeline.model)
    torch.manual_seed(pipeline.seed)
    reference = model_file.build_model()
    batch = model_file.batch(pipeline.batch_size, 0)
    expected = batch.call(reference)
    (output,) = forward_in_order(pipeline, stages, batch)
    assert torch.equal(output, expected)
    model_file.loss_fn(expected, batch.target).backward()
    model_file.loss_fn(output, batch.target).backward()
    # each stage holds its own copy; their gradients together are the original's
    copies = [dict(s.named_parameters()) for s in stages]
    summed = copies[0]["embed.weight"].grad + copies[1]["head.weight"].grad
    torch.testing.assert_close(summed, reference.embed.weight.grad)
    assert copies[0]["embed.weight"] is not copies[1]["head.weight"]
