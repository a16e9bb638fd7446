"""Data-parallel stage replicas on real gloo processes: a synchronous step equals single-process
training, asp equals the replicated stashed replay, and what replicas do not support yet is
refused before any process starts (checkpoints, and a killed replica: test_replica_checkpoints)."""

import csv
import dataclasses
import re
import shutil

import pytest
import torch

from vpipe.codegen.schema import TiedParameter, load_pipeline, save_pipeline
from vpipe.common.schedules import replica_weight_versions
from vpipe.runtime.cli import main as train_main
from vpipe.runtime.stagelog import load_stage_log

from ..codegen.pipelines import generate, plan, profile
from .references import LR, clipped_optimizers, replay, replicated_replay, single_process

MICROBATCHES = 4
STEPS = 3


@pytest.fixture(scope="module")
def mlp_profile(tmp_path_factory):
    return profile("mlp", tmp_path_factory.mktemp("mlp"))


def replicated(profiled, directory, replicas, *plan_args):
    """A straight pipeline of len(replicas) stages, then `with_replicas`."""
    out = generate(plan(profiled, len(replicas), directory, False, *plan_args), directory / "out")
    with_replicas(out, replicas)
    return out


def with_replicas(out, replicas):
    """The straight pipeline in `out`, its pipeline.yaml given replicas[s] consecutive ranks for
    stage s (the rule the planner and vpipe-gen follow)."""
    pipeline = load_pipeline(out / "pipeline.yaml")
    firsts = [sum(replicas[:s]) for s in range(len(replicas))]
    stages = tuple(
        dataclasses.replace(spec, ranks=tuple(range(first, first + r)))
        for spec, first, r in zip(pipeline.stages, firsts, replicas, strict=True)
    )
    save_pipeline(dataclasses.replace(pipeline, stages=stages), out / "pipeline.yaml")


def logged_losses(out):
    with open(out / "run" / "metrics.csv") as file:
        return [(int(row["step"]), float(row["loss"])) for row in csv.DictReader(file)]


def final_weights(out, stages):
    return [torch.load(out / "run" / f"final_stage_{k}.pt") for k in range(stages)]


def replica_logs(out, replicas):
    """Each process's stage log, by (stage, replica)."""
    return {
        (s, i): load_stage_log(out / "run" / f"stage_{s}{f'_replica{i}' if r > 1 else ''}.yaml")
        for s, r in enumerate(replicas)
        for i in range(r)
    }


def assert_replicas_agree(out, replicas):
    """A replicated stage's replicas ended with the same weights (their logged digests)."""
    logs = replica_logs(out, replicas)
    for s, r in enumerate(replicas):
        digests = {logs[s, i].weights_sha256 for i in range(r)}
        assert len(digests) == 1 and (None in digests) == (r == 1), (s, digests)


@pytest.mark.parametrize("replicas", [(2, 2), (2, 1)])
def test_sync_replicas_equal_single_process(mlp_profile, tmp_path, capfd, replicas):
    """1f1b with 2 x 2 and 2 x 1 replicas: the same losses and final parameters as one process
    training on the same M micro-batches a step; every rank says where it sits."""
    argv = ["--schedule", "1f1b", "--microbatches", str(MICROBATCHES)]
    out = replicated(mlp_profile, tmp_path, replicas, *argv)
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS), "--lr", str(LR), "--threads", "1"]
    assert train_main([*argv, "--optimizer", "momentum"]) == 0
    printed = capfd.readouterr().out
    places = re.findall(r"\[Rank (\d+)\] Stage: (\d+), Rank in stage: (\d+)", printed)
    wanted = [(s, i) for s, r in enumerate(replicas) for i in range(r)]
    assert sorted((int(r), (int(s), int(i))) for r, s, i in places) == list(enumerate(wanted))
    expected, losses = single_process(load_pipeline(out / "pipeline.yaml"), STEPS)
    seen = set()
    for trained in final_weights(out, len(replicas)):
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
            seen.add(name)
    assert seen == set(expected)
    logged = logged_losses(out)
    assert [step for step, _ in logged] == list(range(STEPS))
    assert [loss for _, loss in logged] == pytest.approx(losses, rel=1e-5)
    assert_replicas_agree(out, replicas)


@pytest.mark.parametrize("replicas", [(2, 2), (2, 1)])
def test_sync_replicas_clip_as_clip_grad_norm(mlp_profile, tmp_path, replicas):
    """--clip-grad-norm with replicated stages: every step's global norm is the whole model's
    (each replica counts its share of its stage's), so the run equals one process training with
    torch's clip_grad_norm_, every step clipped by a good margin."""
    max_norm = 0.05
    argv = ["--schedule", "1f1b", "--microbatches", str(MICROBATCHES)]
    out = replicated(mlp_profile, tmp_path, replicas, *argv)
    argv = [str(out / "pipeline.yaml"), "--steps", str(STEPS), "--lr", str(LR), "--threads", "1"]
    assert train_main([*argv, "--optimizer", "momentum", "--clip-grad-norm", str(max_norm)]) == 0
    norms: list[float] = []
    pipeline = load_pipeline(out / "pipeline.yaml")
    expected, losses = single_process(pipeline, STEPS, clip=max_norm, norms=norms)
    assert min(norms) > 2 * max_norm
    for trained in final_weights(out, len(replicas)):
        for name, tensor in trained.items():
            torch.testing.assert_close(tensor, expected[name].detach(), rtol=1e-5, atol=1e-6)
    assert [loss for _, loss in logged_losses(out)] == pytest.approx(losses, rel=1e-5)
    assert_replicas_agree(out, replicas)


def test_the_replicated_replay_is_replay_without_replicas(mlp_profile, tmp_path):
    """The asp reference below, with one replica a stage, is the straight stashed replay."""
    out = generate(plan(mlp_profile, 2, tmp_path, False), tmp_path / "out")
    weights, _ = replicated_replay(out, 6, (1, 1))
    for mine, theirs in zip(weights, replay(out, 6), strict=True):
        for name, tensor in mine.items():
            torch.testing.assert_close(tensor, theirs[name], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def asp_run(mlp_profile, tmp_path_factory):
    """2 stages x 2 replicas under asp, 24 micro-batches of plain SGD; then its report."""
    directory = tmp_path_factory.mktemp("asp")
    out = replicated(mlp_profile, directory, (2, 2))
    argv = [str(out / "pipeline.yaml"), "--steps", "24", "--lr", str(LR), "--threads", "1"]
    assert train_main([*argv, "--optimizer", "sgd", "--schedule", "asp"]) == 0
    return out


def test_asp_replicas_equal_the_replicated_replay(asp_run):
    """Every replica of a stage ends identical, the weights equal the replay of PipeDream's
    rule (the replicas' k-th backwards make one update, on stashed versions) and not the
    straight pipeline's, every micro-batch's loss is logged in order as the replay computes it,
    and the loss falls. Identical at the end means identical after every step: each update
    subtracts the same all-reduced gradient times lr (plain SGD) on every replica, so a
    difference between two replicas' weights, once made, would never shrink."""
    assert_replicas_agree(asp_run, (2, 2))
    expected, losses = replicated_replay(asp_run, 24, (2, 2))
    straight, _ = replicated_replay(asp_run, 24, (1, 1))
    differs = False
    for trained, wanted, unreplicated in zip(
        final_weights(asp_run, 2), expected, straight, strict=True
    ):
        for name, tensor in wanted.items():
            torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-6)
            differs |= not torch.allclose(trained[name], unreplicated[name], 1e-5, 1e-6)
    assert differs
    logged = logged_losses(asp_run)
    assert [step for step, _ in logged] == list(range(24))
    assert [loss for _, loss in logged] == pytest.approx(losses, rel=1e-5)
    assert sum(losses[-8:]) < sum(losses[:8]) - 0.2  # the mean of 8 fell by more than 0.025


def test_asp_replicas_hold_the_planners_versions(asp_run):
    """The weight versions a replica held at once are what the planner's memory model counts
    for one replica (`replica_weight_versions`: ceil(w / r) under asp)."""
    for (s, _), log in replica_logs(asp_run, (2, 2)).items():
        assert log.peak_weight_versions == replica_weight_versions("asp", 2, 4 - 2 * s)


def test_asp_replicas_clip_their_summed_gradient(mlp_profile, tmp_path):
    """--clip-grad-norm under asp with 2 x 2 replicas: a stage's replicas clip the update's
    summed gradient by its own norm (asp's per-stage rule), end identical, and equal the
    replicated replay with clip_grad_norm_ on each stage's update, most updates clipped."""
    max_norm, steps = 0.05, 12
    out = replicated(mlp_profile, tmp_path, (2, 2))
    argv = [str(out / "pipeline.yaml"), "--steps", str(steps), "--lr", str(LR), "--threads", "1"]
    argv += ["--optimizer", "sgd", "--schedule", "asp", "--clip-grad-norm", str(max_norm)]
    assert train_main(argv) == 0
    assert_replicas_agree(out, (2, 2))
    norms: list[float] = []
    sgd = clipped_optimizers(lambda params: torch.optim.SGD(params, lr=LR), max_norm, norms)
    expected, losses = replicated_replay(out, steps, (2, 2), update=sgd)
    assert sum(n > 2 * max_norm for n in norms) > len(norms) / 2
    for trained, wanted in zip(final_weights(out, 2), expected, strict=True):
        for name, tensor in wanted.items():
            torch.testing.assert_close(trained[name], tensor, rtol=1e-5, atol=1e-6)
    assert [loss for _, loss in logged_losses(out)] == pytest.approx(losses, rel=1e-5)


def test_the_report_has_a_row_per_replica(asp_run, capsys):
    assert train_main([str(asp_run / "pipeline.yaml"), "--report"]) == 0
    printed = capsys.readouterr().out
    rows = [line.split()[0] for line in printed.splitlines() if re.match(r"\s+\d\.\d ", line)]
    assert rows == ["0.0", "0.1", "1.0", "1.1"]
    assert (asp_run / "run" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (asp_run / "run" / "report.md").read_text()
    assert "2 stages on 4 processes" in markdown


@pytest.fixture(scope="module")
def two_by_two(mlp_profile, tmp_path_factory):
    """A 1f1b pipeline of 2 stages x 2 replicas, for the refusals (nothing trains)."""
    argv = ["--schedule", "1f1b", "--microbatches", str(MICROBATCHES)]
    return replicated(mlp_profile, tmp_path_factory.mktemp("refused"), (2, 2), *argv)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--schedule", "asp", "--steps", "5"], "--steps 5: under asp a stage with r replicas"),
        (
            ["--schedule", "asp", "--checkpoint-every", "3"],
            "--checkpoint-every 3: under asp a stage with r replicas updates once every r "
            "micro-batches (stage 0 x 2 + stage 1 x 2), so its replicas update alike only over a "
            "multiple of 2 steps: use --checkpoint-every 2 or 4",
        ),
    ],
)
def test_unsupported_options_are_refused(two_by_two, capsys, extra, message):
    argv = [str(two_by_two / "pipeline.yaml"), "--steps", "2", *extra]
    assert train_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "stage 0 x 2 + stage 1 x 2" in err, err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda p: dataclasses.replace(p, schedule="asp", tied=(TiedParameter(("w",), (0, 1)),)),
            "parameters tied across stages (w) under asp: not supported with replicated stages",
        ),
        (
            lambda p: dataclasses.replace(p, microbatches=1),
            "1 micro-batches per step leave a replica of a stage with 2 replicas",
        ),
        (
            lambda p: dataclasses.replace(
                p,
                stages=(
                    dataclasses.replace(p.stages[0], ranks=(0, 2)),
                    dataclasses.replace(p.stages[1], ranks=(1, 3)),
                ),
            ),
            "stage 0 runs on ranks [0, 2]; each stage's replicas take the next consecutive",
        ),
    ],
)
def test_unsupported_pipelines_are_refused(two_by_two, tmp_path, capsys, change, message):
    out = shutil.copytree(two_by_two, tmp_path / "out")
    path = out / "pipeline.yaml"
    save_pipeline(change(load_pipeline(path)), path)
    assert train_main([str(path), "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err, err
