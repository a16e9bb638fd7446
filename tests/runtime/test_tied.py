"""Tied parameters on two stages stay equal and train like the single-process model."""

import shutil
from pathlib import Path

import torch

from vpipe.codegen.cli import main as generate_main
from vpipe.codegen.schema import load_pipeline
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime.cli import main as train_main

from .test_sync import LR, single_process

FIXTURE = Path(__file__).parents[1] / "codegen" / "fixtures" / "tied.py"


def generate_tied(gpus: int):
    """The fixture profiled, planned on `gpus` stages (1f1b, M = 2) and generated, here."""
    shutil.copy(FIXTURE, "tied.py")
    assert profile_main(["tied.py", "-o", "profile.yaml", "-q", "--device", "cpu"]) == 0
    argv = ["profile.yaml", "--gpus", str(gpus), "--schedule", "1f1b", "--microbatches", "2"]
    assert plan_main([*argv, "-o", "plan.yaml", "-q"]) == 0
    assert generate_main(["plan.yaml", "-o", "out", "-q"]) == 0
    return load_pipeline("out/pipeline.yaml")


def test_tied_copies_stay_equal_to_single_process(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    pipeline = generate_tied(2)
    assert pipeline.tied and pipeline.tied[0].stages == (0, 1)

    train = ["out/pipeline.yaml", "--steps", "3", "--lr", str(LR), "--optimizer", "momentum"]
    assert train_main([*train, "--schedule", "asp"]) == 2  # refused: stages update apart
    assert "tied parameters" in capsys.readouterr().err
    assert train_main([*train, "--threads", "1"]) == 0
    expected, _ = single_process(pipeline, 3)
    first = torch.load("out/run/final_stage_0.pt")["embed.weight"]
    second = torch.load("out/run/final_stage_1.pt")["head.weight"]
    assert torch.equal(first, second)
    torch.testing.assert_close(first, expected["embed.weight"].detach(), rtol=1e-5, atol=1e-6)


def test_tied_weights_on_one_stage_stay_one_tensor(tmp_path, monkeypatch):
    """Embedding and head on the same stage: built from the meta device, the stage must tie
    them again (materialising gives each name its own tensor), and train like one model."""
    monkeypatch.chdir(tmp_path)
    pipeline = generate_tied(1)
    train = ["out/pipeline.yaml", "--steps", "3", "--lr", str(LR), "--optimizer", "momentum"]
    assert train_main([*train, "--threads", "1"]) == 0
    expected, _ = single_process(pipeline, 3)
    for name, tensor in torch.load("out/run/final_stage_0.pt").items():
        torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
