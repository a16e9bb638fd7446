"""Never train silently wrong, on real gloo processes: a NaN in the data stops the run with one
line naming the stage, step and micro-batch, keeping the checkpoints before it and writing
nothing after; with --skip-nonfinite the step is skipped by every stage, and every replica of a
replicated stage, as a single process that skips it."""

import pytest
import torch
import yaml

from vpipe.codegen.schema import load_pipeline
from vpipe.planner.cli import main as plan_main
from vpipe.runtime import checkpoint
from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import generate, profile, straight
from .fixtures import ignored_labels, nan_batch
from .references import LR, single_process
from .test_replicas import assert_replicas_agree, final_weights, replica_logs, replicated

MODEL = nan_batch.__file__
MICROBATCHES = 2
BAD_STEP = {"1f1b": nan_batch.NAN_AT // MICROBATCHES, "asp": nan_batch.NAN_AT}
COMMON = ["--optimizer", "momentum", "--lr", str(LR), "--threads", "1"]


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    return profile(MODEL, tmp_path_factory.mktemp("nan"))


def _pipeline(profiled, tmp_path, schedule):
    planned = tmp_path / "plan.yaml"
    argv = [
        str(profiled),
        *straight(2),
        "--schedule",
        schedule,
        "-o",
        str(planned),
        "-q",
    ]
    if schedule != "asp":
        argv += ["--microbatches", str(MICROBATCHES)]
    assert plan_main(argv) == 0
    return generate(planned, tmp_path / "out")


@pytest.mark.parametrize("schedule", ["1f1b", "asp"])
def test_nan_stops_the_run(profiled, tmp_path, capfd, schedule):
    out = _pipeline(profiled, tmp_path, schedule)
    steps = BAD_STEP[schedule] + 3
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--checkpoint-every", "1"]
    capfd.readouterr()
    assert train_main([*argv, *COMMON]) == 2
    err = capfd.readouterr().err
    bad = BAD_STEP[schedule]
    found = (
        f"vpipe-train: error: stage 1: non-finite loss at step {bad}, "
        f"micro-batch {nan_batch.NAN_AT} (loss nan; "
    )
    # one line, the cause's: not stage 0's loss of stage 1, which came after
    assert len(err.splitlines()) == 1 and err.startswith(found), err
    assert "lower --lr" in err and "--skip-nonfinite" in err, err
    run = out / "run"
    log = run / "logs" / "stage_1.log"
    assert err.endswith(f" (full traceback: {log})\n") and "Traceback" in log.read_text(), err
    assert not list(run.glob("final_stage_*.pt"))
    # the bad step's update never happened anywhere; under asp stage 0 may or may not have
    # finished its checkpoint of the step before when the launcher stopped it
    folder = run / "checkpoints"
    newest = checkpoint.newest_complete(folder, 2)
    assert newest in ({bad} if schedule == "1f1b" else {bad - 1, bad})
    assert all(int(p.name.removeprefix("step_")) <= bad for p in folder.iterdir())
    for stage in (0, 1):
        saved = torch.load(folder / f"step_{newest}" / f"stage_{stage}.pt", weights_only=True)
        assert all(torch.isfinite(w).all() for w in saved["stage"]["weights"].values())


def _train_skipping_one(out, capfd):
    """Train `out`'s pipeline with --skip-nonfinite two steps past the bad one under 1f1b; it
    must end saying it skipped one step. The steps run."""
    steps = BAD_STEP["1f1b"] + 2
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--skip-nonfinite"]
    capfd.readouterr()
    assert train_main([*argv, *COMMON]) == 0
    printed = capfd.readouterr().out.splitlines()
    assert printed[-1] == "skipped 1 step with a non-finite loss or gradient (--skip-nonfinite)"
    return steps


def test_skip_nonfinite_skips_the_step_everywhere(profiled, tmp_path, capfd):
    out = _pipeline(profiled, tmp_path, "1f1b")
    steps = _train_skipping_one(out, capfd)
    pipeline = load_pipeline(out / "pipeline.yaml")
    expected, _ = single_process(pipeline, steps, skip=BAD_STEP["1f1b"])
    seen = set()
    for k in (0, 1):
        stage = yaml.safe_load((out / "run" / f"stage_{k}.yaml").read_text())
        assert stage["skipped_steps"] == 1
        for name, tensor in torch.load(out / "run" / f"final_stage_{k}.pt").items():
            torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
            seen.add(name)
    assert seen == set(expected)


@pytest.mark.parametrize(
    ("fixture", "replicas"),
    [(nan_batch, (2, 1)), (ignored_labels, (2, 2)), (ignored_labels, (2, 1))],
    ids=["nan-input-2x1", "nan-loss-2x2", "nan-loss-2x1"],
)
def test_replicas_skip_the_same_steps(tmp_path, capfd, fixture, replicas):
    """With replicated stages every process skips step 3, and only it, and the run equals a
    single process that skips it. nan_batch's NaN input makes every gradient of the step nan, on
    every process; ignored_labels makes only micro-batch 6's loss nan, on the one replica of the
    last stage that runs it, every gradient finite: the others skip because the decision is
    every process's."""
    argv = ["--schedule", "1f1b", "--microbatches", str(MICROBATCHES)]
    out = replicated(profile(fixture.__file__, tmp_path), tmp_path, replicas, *argv)
    steps = _train_skipping_one(out, capfd)
    assert [log.skipped_steps for log in replica_logs(out, replicas).values()] == [1] * sum(
        replicas
    )
    assert_replicas_agree(out, replicas)
    pipeline = load_pipeline(out / "pipeline.yaml")
    expected, _ = single_process(pipeline, steps, skip=BAD_STEP["1f1b"])
    for trained in final_weights(out, len(replicas)):
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)


def test_skip_nonfinite_refused_under_asp(profiled, tmp_path, capfd):
    out = _pipeline(profiled, tmp_path, "asp")
    capfd.readouterr()
    assert train_main([str(out / "pipeline.yaml"), "--skip-nonfinite"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("vpipe-train: error: --skip-nonfinite is not supported under ")
    assert len(err.splitlines()) == 1 and not (out / "run").exists()
