"""Tied parameters on several stages stay equal: under 1f1b they train like the single-process
model, with replicated stages too; under asp like a single-process replay of the summed,
staggered updates (runtime/tied.py); and the plan counts each copy in its stage's memory."""

import shutil
from pathlib import Path

import pytest
import torch

from vpipe.codegen.cli import main as generate_main
from vpipe.codegen.schema import load_pipeline
from vpipe.planner.cli import main as plan_main
from vpipe.planner.schema import load_plan
from vpipe.profiler.cli import main as profile_main
from vpipe.profiler.schema import load_profile
from vpipe.runtime.cli import main as train_main

from .references import LR, replay, single_process
from .test_replicas import assert_replicas_agree, final_weights, logged_losses, with_replicas

STEPS = 6

FIXTURE = Path(__file__).parents[1] / "codegen" / "fixtures" / "tied.py"


def generate_tied(gpus: int, schedule: str = "1f1b"):
    """The fixture profiled, planned on `gpus` stages (M = 2 under 1f1b) and generated, here.
    The split is the uniform one (2 stages: 4 + 3 nodes; 4: 2 + 2 + 2 + 1), so the embedding is
    on the first stage and the head on the last whatever this machine's timings: the fastest
    split of nodes this small moves with the noise."""
    shutil.copy(FIXTURE, "tied.py")
    assert profile_main(["tied.py", "-o", "profile.yaml", "-q", "--device", "cpu"]) == 0
    argv = ["profile.yaml", "--gpus", str(gpus), "--schedule", schedule, "--split", "uniform"]
    argv += ["--microbatches", "2"] if schedule != "asp" else []
    assert plan_main([*argv, "-o", "plan.yaml", "-q"]) == 0
    assert generate_main(["plan.yaml", "-o", "out", "-q"]) == 0
    return load_pipeline("out/pipeline.yaml")


def test_tied_copies_stay_equal_to_single_process(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pipeline = generate_tied(2)
    assert pipeline.tied and pipeline.tied[0].stages == (0, 1)

    train = ["out/pipeline.yaml", "--steps", "3", "--lr", str(LR), "--optimizer", "momentum"]
    assert train_main([*train, "--threads", "1"]) == 0
    expected, _ = single_process(pipeline, 3)
    first = torch.load("out/run/final_stage_0.pt")["embed.weight"]
    second = torch.load("out/run/final_stage_1.pt")["head.weight"]
    assert torch.equal(first, second)
    torch.testing.assert_close(first, expected["embed.weight"].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("replicas", [(2, 2), (2, 1)])
def test_replicated_tied_copies_equal_single_process(tmp_path, monkeypatch, replicas):
    """1f1b with 2 x 2 and 2 x 1 replicas: the tied sum follows the replicas' (replica 0 of
    each holder giving its stage's gradient), so every copy on every replica ends bit-equal,
    and the losses and every weight equal single-process training."""
    monkeypatch.chdir(tmp_path)
    pipeline = generate_tied(2)
    with_replicas(Path("out"), replicas)
    train = ["out/pipeline.yaml", "--steps", "3", "--lr", str(LR), "--optimizer", "momentum"]
    assert train_main([*train, "--threads", "1"]) == 0
    assert_replicas_agree(Path("out"), replicas)
    first, second = final_weights(Path("out"), 2)
    weights = {**first, **second}
    assert torch.equal(weights.pop("head.weight"), weights["embed.weight"])  # the copies
    expected, losses = single_process(pipeline, 3)
    assert set(weights) == set(expected)
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
    assert [loss for _, loss in logged_losses(Path("out"))] == pytest.approx(losses, rel=1e-5)


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


@pytest.mark.parametrize("stages", [2, 3])
def test_asp_tied_copies_stay_equal_and_follow_the_replay(tmp_path, monkeypatch, stages):
    """The owner (stage 0) applies update i at its own update i; stage S - 1 at its update of
    micro-batch i + S - 1 and, for the last S - 1, at the end. The copies end bit-equal, and
    every weight equals the one-process replay of that rule with weight stashing."""
    monkeypatch.chdir(tmp_path)
    pipeline = generate_tied(stages, "asp")
    assert [t.stages for t in pipeline.tied] == [(0, stages - 1)]
    train = ["out/pipeline.yaml", "--steps", str(STEPS), "--lr", str(LR), "--threads", "1"]
    assert train_main([*train, "--optimizer", "sgd"]) == 0
    final = [torch.load(f"out/run/final_stage_{k}.pt") for k in range(stages)]
    assert torch.equal(final[0]["embed.weight"], final[-1]["head.weight"])
    expected = replay(Path("out"), STEPS)
    for k in range(stages):
        for name, tensor in final[k].items():
            torch.testing.assert_close(tensor, expected[k][name], rtol=1e-5, atol=1e-6)
    initial = torch.load("out/weights/stage_0.pt")["embed.weight"]
    assert not torch.equal(initial, final[0]["embed.weight"])  # it trained


def test_asp_tied_copies_stay_equal_under_adam(tmp_path, monkeypatch):
    """Adam's state and step count of the copy (a separate count on the later stage) give the
    very same updates as the owner's."""
    monkeypatch.chdir(tmp_path)
    generate_tied(2, "asp")
    train = ["out/pipeline.yaml", "--steps", str(STEPS), "--lr", "0.01", "--threads", "1"]
    assert train_main([*train, "--optimizer", "adam"]) == 0
    first = torch.load("out/run/final_stage_0.pt")["embed.weight"]
    assert torch.equal(first, torch.load("out/run/final_stage_1.pt")["head.weight"])


def test_the_plan_counts_the_copy_on_the_later_stage(tmp_path, monkeypatch):
    """Hand count: the head's stage holds the 32 x 16 float32 embedding (2048 B) as a weight of
    its own: in every version asp keeps (S - s), with a gradient and, for the plan's optimizer
    (sgd), no state; the embedding's stage pays for it through the embedding's node."""
    monkeypatch.chdir(tmp_path)
    generate_tied(2, "asp")
    planned = load_plan("plan.yaml")
    profiled = load_profile("profile.yaml")
    (tie,) = profiled.ties
    assert (tie.names, tie.bytes, tie.trainable) == (("embed.weight", "head.weight"), 2048, True)
    assert tie.users == ("embed", "head")
    assert [t.stages for t in planned.ties] == [(0, 1)]
    nodes = {n.name: n for n in profiled.nodes}
    for stage in planned.stages:
        own = sum(nodes[n].param_bytes + nodes[n].buffer_bytes for n in stage.nodes)
        trainable = sum(nodes[n].grad_bytes for n in stage.nodes)
        copy = 2048 if "head" in stage.nodes and "embed" not in stage.nodes else 0
        versions = planned.settings.gpus - stage.index
        memory = stage.predicted.memory
        assert memory.params == own + copy
        assert memory.stash == (trainable + copy) * (versions - 1)
        assert memory.grads == trainable + copy
        assert memory.optimizer == 0  # sgd
