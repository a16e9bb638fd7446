"""--switch-plan: a running pipeline moves to another plan of the same profile and processes,
and trains on as if the split had never changed (sync) or as asp with the new stages would."""

import csv
import dataclasses
import math

import pytest
import torch

from vpipe.codegen.schema import load_pipeline
from vpipe.common.errors import VpipeError
from vpipe.planner.schema import load_plan, save_plan
from vpipe.runtime import checkpoint
from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import generate, plan, profile
from .references import LR, asp_switched_replay, single_process, stage_of
from .test_faults import kill_after_checkpoint, start_ranks

STEPS = 4
SWITCH = 2


@pytest.fixture(scope="module")
def gpt_profile(tmp_path_factory):
    return profile("gpt", tmp_path_factory.mktemp("gpt"), batch_size=2)


def resplit(planned, out, first, recompute=False):
    """`planned` with its first stage holding the first `first` nodes of the profile's order
    and the second the rest (two stages); with `recompute`, every node but each third of
    both recomputed."""
    plan_ = load_plan(planned)
    order = [n for stage in plan_.stages for n in stage.nodes]
    parts = (tuple(order[:first]), tuple(order[first:]))
    stages = tuple(
        dataclasses.replace(
            stage,
            nodes=nodes,
            recompute=tuple(n for i, n in enumerate(nodes) if i % 3) if recompute else (),
        )
        for stage, nodes in zip(plan_.stages, parts, strict=True)
    )
    save_plan(dataclasses.replace(plan_, stages=stages), out)
    return out


def final_weights(out, stages=2):
    trained = {}
    for k in range(stages):
        trained.update(torch.load(out / "run" / f"final_stage_{k}.pt"))
    return trained


def logged_losses(out):
    with open(out / "run" / "metrics.csv") as file:
        return [float(row["loss"]) for row in csv.DictReader(file)]


@pytest.fixture(scope="module")
def sync_plans(gpt_profile, tmp_path_factory):
    """A 1f1b plan of two stages (its split and recompute set by each test) and its node count."""
    folder = tmp_path_factory.mktemp("plans")
    base = plan(gpt_profile, 2, folder, False, "--schedule", "1f1b", "--microbatches", "3")
    return base, sum(len(s.nodes) for s in load_plan(base).stages)


@pytest.mark.parametrize(
    ("before", "after", "recompute"),
    [(0.5, 0.75, True), (0.75, 0.3, False)],  # nodes move forward, then back
    ids=["forward", "back"],
)
def test_1f1b_switch_equals_single_process(sync_plans, tmp_path, before, after, recompute):
    base, nodes = sync_plans
    first = resplit(base, tmp_path / "a.yaml", int(nodes * before), recompute)
    second = resplit(base, tmp_path / "b.yaml", int(nodes * after), not recompute)
    out = generate(first, tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS), "--lr", str(LR), "--threads", "1"]
    argv += ["--optimizer", "momentum", "--switch-plan", f"{SWITCH}:{second}"]
    assert train_main(argv) == 0
    expected, losses = single_process(load_pipeline(out / "pipeline.yaml"), STEPS)
    trained = final_weights(out)
    assert set(trained) == set(expected)
    for name, tensor in trained.items():
        torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
    assert logged_losses(out) == pytest.approx(losses, rel=1e-5)
    # the stages ran the second plan's split after the switch
    switched = load_pipeline(out / "run" / "plans" / f"step_{SWITCH}" / "pipeline.yaml")
    held = set(torch.load(out / "run" / "final_stage_0.pt"))
    assert held >= set(switched.stages[0].parameters)
    assert held != set(load_pipeline(out / "pipeline.yaml").stages[0].parameters)


def test_asp_switch_keeps_weight_stashing(gpt_profile, tmp_path):
    base = plan(gpt_profile, 2, tmp_path, False, "--schedule", "asp")
    nodes = sum(len(s.nodes) for s in load_plan(base).stages)
    first = resplit(base, tmp_path / "a.yaml", nodes // 2)
    second = resplit(base, tmp_path / "b.yaml", nodes * 3 // 4, recompute=True)
    out = generate(first, tmp_path / "out")
    steps, switch = 8, 4
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--lr", str(LR), "--threads", "1"]
    argv += ["--optimizer", "sgd", "--switch-plan", f"{switch}:{second}"]
    assert train_main(argv) == 0
    pipeline = load_pipeline(out / "pipeline.yaml")
    switched = load_pipeline(out / "run" / "plans" / f"step_{switch}" / "pipeline.yaml")
    segments = [(0, stage_of(pipeline)), (switch, stage_of(switched))]
    expected = asp_switched_replay(pipeline, segments, steps)
    trained = final_weights(out)
    assert set(trained) == set(expected)
    for name, tensor in trained.items():
        torch.testing.assert_close(tensor, expected[name], rtol=1e-5, atol=1e-6)
    # the reference tells the switch apart: without it, another split stashes other versions
    unswitched = asp_switched_replay(pipeline, segments[:1], steps)
    assert any(not torch.allclose(trained[n], unswitched[n], rtol=1e-5, atol=1e-6) for n in trained)
    losses = logged_losses(out)  # training went on: every step's loss, each finite
    assert len(losses) == steps and all(math.isfinite(loss) for loss in losses)


def test_switch_checkpoint_resume_equals_an_unbroken_run(sync_plans, tmp_path):
    base, nodes = sync_plans
    first = resplit(base, tmp_path / "a.yaml", nodes // 2)
    second = resplit(base, tmp_path / "b.yaml", nodes * 3 // 4, recompute=True)
    out = generate(first, tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--lr", str(LR), "--threads", "1", "--optimizer"]
    argv += ["momentum", "--switch-plan", f"{SWITCH}:{second}", "--checkpoint-every", "1"]
    # stopped after the switch, resumed on the plan in force; then stopped at the switch's
    # own step (the old plan's checkpoint), resumed, switching on the way
    assert train_main([*argv, "--steps", str(SWITCH + 1)]) == 0
    assert train_main([*argv, "--steps", str(STEPS), "--resume"]) == 0
    expected, losses = single_process(load_pipeline(out / "pipeline.yaml"), STEPS)
    for name, tensor in final_weights(out).items():
        torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
    assert logged_losses(out) == pytest.approx(losses, rel=1e-5)


def test_resume_at_the_switch_step_switches_on_the_way(sync_plans, tmp_path):
    base, nodes = sync_plans
    first = resplit(base, tmp_path / "a.yaml", nodes // 2)
    second = resplit(base, tmp_path / "b.yaml", nodes // 4)
    out = generate(first, tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--lr", str(LR), "--threads", "1", "--optimizer"]
    argv += ["momentum", "--checkpoint-every", "1"]
    assert train_main([*argv, "--steps", str(SWITCH)]) == 0
    argv += ["--switch-plan", f"{SWITCH}:{second}", "--resume", "--steps", str(STEPS)]
    assert train_main(argv) == 0
    expected, _ = single_process(load_pipeline(out / "pipeline.yaml"), STEPS)
    for name, tensor in final_weights(out).items():
        torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("other", ["stages", "batch"])
def test_a_plan_of_other_processes_or_profile_is_refused_before_anything_moves(
    gpt_profile, sync_plans, tmp_path, capsys, other
):
    base, _ = sync_plans
    if other == "stages":
        wrong = plan(gpt_profile, 3, tmp_path, False, "--schedule", "1f1b", "--microbatches", "3")
        said = "the plan runs 3 stages on 3 processes"
    else:
        another = profile("gpt", tmp_path, batch_size=4)
        wrong = plan(another, 2, tmp_path, False, "--schedule", "1f1b", "--microbatches", "3")
        said = "another profile"
    out = generate(base, tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS), "--switch-plan", f"1:{wrong}"]
    assert train_main(argv) != 0
    assert said in capsys.readouterr().err
    assert not (out / "run" / "metrics.csv").exists()  # no stage started


def test_a_switch_outside_the_run_is_refused(sync_plans, tmp_path, capsys):
    base, _ = sync_plans
    out = generate(base, tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS)]
    assert train_main([*argv, "--switch-plan", f"{STEPS}:{base}"]) != 0
    assert "the step must fall inside the run" in capsys.readouterr().err
    with pytest.raises(VpipeError, match="give STEP:PLAN"):
        from vpipe.runtime.switching import PlanSwitch

        PlanSwitch.parse("soon:plan.yaml")


def test_a_rank_killed_at_the_switch_stops_the_job_and_the_checkpoint_resumes(tmp_path):
    """Torchrun-like ranks switch plans after step 6 with a checkpoint there; rank 1 is killed
    as soon as that checkpoint is complete (the moment the stages drain for the switch): rank 0
    stops within the timeout, in one line naming what it lost, and the checkpoint resumes,
    switching on the way, to the end single-process training reaches."""
    mlp = profile("mlp", tmp_path)
    base = plan(mlp, 2, tmp_path, False, "--schedule", "1f1b", "--microbatches", "2")
    nodes = sum(len(s.nodes) for s in load_plan(base).stages)
    first = resplit(base, tmp_path / "a.yaml", nodes // 2)
    second = resplit(base, tmp_path / "b.yaml", nodes // 2 + 2)
    out = generate(first, tmp_path / "out")
    switch = ["--switch-plan", f"6:{second}", "--optimizer", "momentum", "--lr", str(LR)]
    ranks = start_ranks(out, 2, *switch, "--checkpoint-every", "6")
    folder = out / "run" / "checkpoints"
    (err,) = kill_after_checkpoint(ranks, folder, 2, 6, victim=1)
    assert ranks[0].returncode != 0
    assert err.splitlines()[-1].startswith("vpipe-train: error: stage 0: lost "), err
    resumed = checkpoint.newest_complete(folder, 2)
    argv = [str(out / "pipeline.yaml"), "--resume", "--steps", str(resumed + 2), *switch]
    assert train_main([*argv, "--threads", "1"]) == 0
    expected, _ = single_process(load_pipeline(out / "pipeline.yaml"), resumed + 2)
    for name, tensor in final_weights(out).items():
        torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
