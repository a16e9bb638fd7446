"""Checkpoints of replicated stages on real gloo processes: one file per stage, holding each
replica's own part, and a resumed run ends bitwise as an unbroken one under 1f1b and asp, also
after a replica was killed. The model has dropout and batch norm, so each replica's random
state and running statistics must come back as its own."""

import dataclasses
import shutil

import pytest
import torch

from vpipe.codegen.schema import load_pipeline, save_pipeline
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime import checkpoint
from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import QUICK_PROFILE
from .test_checkpoint import COMMON, DROPOUT_MLP
from .test_faults import kill_after_checkpoint, start_ranks
from .test_replicas import final_weights, replica_logs, replicated


@pytest.fixture(scope="module")
def dropout_profile(tmp_path_factory):
    path = tmp_path_factory.mktemp("dropout") / "profile.yaml"
    assert profile_main([str(DROPOUT_MLP), "-o", str(path), *QUICK_PROFILE]) == 0
    return path


def outcome(out, replicas):
    """What a run ended with: each stage's final weights and buffers, every process's digest
    of its own (a replica's running statistics are its own), and each step's logged loss."""
    rows = (out / "run" / "metrics.csv").read_text().splitlines()[1:]
    digests = {k: log.weights_sha256 for k, log in replica_logs(out, replicas).items()}
    return final_weights(out, len(replicas)), digests, [row.split(",")[:2] for row in rows]


def assert_same(resumed, unbroken):
    (weights, digests, losses), (expected, wanted, logged) = resumed, unbroken
    for mine, theirs in zip(weights, expected, strict=True):
        assert mine.keys() == theirs.keys()
        for name in theirs:
            assert torch.equal(mine[name], theirs[name]), name
    assert digests == wanted
    assert losses == logged


def test_sync_replicas_resume_exactly(dropout_profile, tmp_path, capfd):
    """2 stages x 2 replicas under 1f1b: a run stopped after step 2 (checkpointing every step)
    and resumed to step 4 ends as a run of 4 steps; the checkpoint is one file per stage with
    both replicas' parts; a pipeline with other replica counts may not resume it."""
    out = replicated(dropout_profile, tmp_path, (2, 2), "--schedule", "1f1b", "--microbatches", "4")
    broken = shutil.copytree(out, tmp_path / "broken")
    pipeline = broken / "pipeline.yaml"
    assert train_main([str(pipeline), "--steps", "2", "--checkpoint-every", "1", *COMMON]) == 0
    folder = broken / "run" / "checkpoints" / "step_2"
    assert sorted(p.name for p in folder.iterdir()) == ["stage_0.pt", "stage_1.pt"]
    parts = torch.load(folder / "stage_0.pt", weights_only=True)["stage"]["replicas"]
    assert len(parts) == 2 and not torch.equal(parts[0]["rng"]["cpu"], parts[1]["rng"]["cpu"])
    assert train_main([str(pipeline), "--steps", "4", "--resume", *COMMON]) == 0
    assert train_main([str(out / "pipeline.yaml"), "--steps", "4", *COMMON]) == 0
    assert_same(outcome(broken, (2, 2)), outcome(out, (2, 2)))

    uneven = load_pipeline(pipeline)
    stages = (uneven.stages[0], dataclasses.replace(uneven.stages[1], ranks=(2,)))
    save_pipeline(dataclasses.replace(uneven, stages=stages), pipeline)
    capfd.readouterr()
    assert train_main([str(pipeline), "--steps", "6", "--resume", *COMMON]) == 2
    assert (
        "step_2/stage_1.pt was written by 2 replicas of stage 1, and pipeline.yaml gives it 1"
        in (capfd.readouterr().err)
    )


def test_asp_replicas_resume_exactly(dropout_profile, tmp_path, capfd):
    """2 x 2 under asp: each replica of stage 0 has its own micro-batch in flight at a
    checkpoint (with its own random state); resumed from there, the run ends as it did
    unbroken. Resumed past its end from its last checkpoint (taken while it drained), the
    pipeline fills again and every step is logged once."""
    out = replicated(dropout_profile, tmp_path, (2, 2))
    pipeline = [str(out / "pipeline.yaml"), *COMMON]
    assert train_main([*pipeline, "--steps", "8", "--checkpoint-every", "2"]) == 0
    unbroken = outcome(out, (2, 2))
    folder = out / "run" / "checkpoints"
    shutil.rmtree(folder / "step_8")
    stage = torch.load(folder / "step_6" / "stage_0.pt", weights_only=True)["stage"]
    parts = stage["replicas"]  # one stashed version, which both micro-batches in flight use
    assert [[(i, v) for i, v, _ in part["in_flight"]] for part in parts] == [[(6, 0)], [(7, 0)]]
    assert len(stage["versions"]) == 1
    assert not torch.equal(parts[0]["in_flight"][0][2]["cpu"], parts[1]["in_flight"][0][2]["cpu"])
    assert train_main([*pipeline, "--steps", "8", "--resume", "--checkpoint-every", "2"]) == 0
    assert_same(outcome(out, (2, 2)), unbroken)

    capfd.readouterr()
    assert train_main([*pipeline, "--steps", "12", "--resume"]) == 0
    assert "resuming after step 8 from" in capfd.readouterr().out
    _, _, losses = outcome(out, (2, 2))
    assert [step for step, _ in losses] == [str(s) for s in range(12)]
    assert losses[:8] == unbroken[2]


def test_a_killed_replica_stops_the_job_and_resume_finishes_it(dropout_profile, tmp_path):
    """Stage 0 x 2, stage 1 x 1 under asp with torchrun-like ranks, checkpointing; stage 0's
    replica 1 (rank 1) is killed mid-run: its sibling, stuck in their all-reduce, their
    checkpoint's gather or on stage 1, and stage 1 exit non-zero well within --timeout-s, each
    saying in one line which process it lost. Resumed from the last complete checkpoint, the
    run ends as an unbroken one."""
    out = replicated(dropout_profile, tmp_path, (2, 1))
    unbroken = shutil.copytree(out, tmp_path / "unbroken")
    ranks = start_ranks(out, 3, "--checkpoint-every", "2")
    folder = out / "run" / "checkpoints"
    errors = kill_after_checkpoint(ranks, folder, 2, 4, victim=1)
    assert ranks[0].returncode != 0 and ranks[2].returncode != 0
    sibling, stage_1 = (err.splitlines()[-1] for err in errors)
    assert sibling.startswith("vpipe-train: error: stage 0 replica 0 (rank 0): lost "), sibling
    assert stage_1.startswith(
        (
            "vpipe-train: error: stage 1: lost stage 0 replica",
            "vpipe-train: error: stage 1: lost a replica",
        )
    ), stage_1

    steps = [str(checkpoint.newest_complete(folder, 2) + 6), "--threads", "1"]
    assert train_main([str(out / "pipeline.yaml"), "--resume", "--steps", *steps]) == 0
    assert train_main([str(unbroken / "pipeline.yaml"), "--steps", *steps]) == 0
    assert_same(outcome(out, (2, 1)), outcome(unbroken, (2, 1)))
