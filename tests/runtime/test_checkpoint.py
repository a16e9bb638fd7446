"""Checkpoints: a run killed mid-way and resumed ends bitwise as an unbroken run, under the
synchronous schedules and under asp (whose stashed weight versions travel in the checkpoint); a
kill during a write leaves the previous checkpoint whole; bad resumes are refused."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from vpipe.common.optim import Updater
from vpipe.planner.cli import main as plan_main
from vpipe.planner.schema import load_plan
from vpipe.profiler.cli import main as profile_main
from vpipe.runtime import checkpoint
from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import QUICK_PROFILE, generate, plan, profile, straight

DROPOUT_MLP = Path(__file__).parent / "fixtures" / "dropout_mlp.py"  # also batch norm
COMMON = ["--optimizer", "momentum", "--lr", "0.05", "--threads", "1"]


def _final(out, stages):
    return [torch.load(out / "run" / f"final_stage_{k}.pt") for k in range(stages)]


def _rows(out):
    rows = (out / "run" / "metrics.csv").read_text().splitlines()[1:]
    return [row.split(",")[:2] for row in rows]  # step, loss


def _train_until_killed(out: Path, stages: int, every: int, at_least: int) -> int:
    """Start a long run as a user would (its own process group), SIGKILL every process once a
    checkpoint after step `at_least` is complete; the newest complete step."""
    train = shutil.which("vpipe-train", path=str(Path(sys.executable).parent))
    argv = [train, str(out / "pipeline.yaml"), "--steps", "100000", *COMMON]
    run = subprocess.Popen(
        [*argv, "--checkpoint-every", str(every)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    folder = out / "run" / "checkpoints"
    deadline = time.monotonic() + 120
    while (checkpoint.newest_complete(folder, stages) or 0) < at_least:
        assert run.poll() is None, "the run ended before it was killed"
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    return checkpoint.newest_complete(folder, stages)


@pytest.mark.parametrize("schedule", ["asp", "1f1b"])
def test_killed_run_resumes_exactly(tmp_path, schedule):
    """asp on 3 stages (stage 0 keeps 3 micro-batches and up to 3 weight versions in flight),
    dropout on; 1f1b on 2 stages, 2 micro-batches a step."""
    stages = 3 if schedule == "asp" else 2
    profiled = tmp_path / "profile.yaml"
    assert profile_main([str(DROPOUT_MLP), "-o", str(profiled), *QUICK_PROFILE]) == 0
    planned = tmp_path / "plan.yaml"
    argv = [str(profiled), *straight(stages), "--schedule", schedule]
    if schedule == "1f1b":
        argv += ["--microbatches", "2"]
    assert plan_main([*argv, "-o", str(planned), "-q"]) == 0
    unbroken = generate(planned, tmp_path / "unbroken")
    broken = tmp_path / "broken"
    shutil.copytree(unbroken, broken)

    done = _train_until_killed(broken, stages, every=4, at_least=8)
    steps = done + 7  # resumed runs need not stop at a checkpoint
    resume = [str(broken / "pipeline.yaml"), "--steps", str(steps), "--resume", *COMMON]
    assert train_main(resume) == 0
    assert train_main([str(unbroken / "pipeline.yaml"), "--steps", str(steps), *COMMON]) == 0

    for expected, resumed in zip(_final(unbroken, stages), _final(broken, stages), strict=True):
        assert expected.keys() == resumed.keys()
        for name in expected:
            assert torch.equal(expected[name], resumed[name]), name
    # metrics.csv: every step once (the killed run's rows past its checkpoint are replaced)
    assert _rows(broken) == [[str(s), loss] for s, (_, loss) in enumerate(_rows(unbroken))]
    assert len(_rows(broken)) == steps


def test_resume_needs_what_asp_saves(tmp_path):
    """The asp test above can fail: a checkpoint whose in-flight micro-batches lost their
    stashed weight versions (replaced by the newest weights), or their random states (dropout
    draws other masks), resumes to other weights; the same checkpoint untouched does not."""
    profiled = tmp_path / "profile.yaml"
    assert profile_main([str(DROPOUT_MLP), "-o", str(profiled), *QUICK_PROFILE]) == 0
    argv = [
        str(profiled),
        *straight(2),
        "--schedule",
        "asp",
        "-o",
        str(tmp_path / "plan.yaml"),
    ]
    # uniform: stage 0 holds a dropout whatever the profile's times (its random state matters)
    assert plan_main([*argv, "-q", "--split", "uniform"]) == 0
    assert "_3" in load_plan(tmp_path / "plan.yaml").stages[0].nodes  # nn.Dropout
    out = generate(tmp_path / "plan.yaml", tmp_path / "out")
    pipeline = str(out / "pipeline.yaml")
    assert train_main([pipeline, "--steps", "4", "--checkpoint-every", "2", *COMMON]) == 0
    unbroken = _final(out, 2)[0]
    shutil.rmtree(out / "run" / "checkpoints" / "step_4")  # resume from step 2

    def resumes_unbroken() -> bool:
        assert train_main([pipeline, "--steps", "4", "--resume", *COMMON]) == 0
        return all(torch.equal(unbroken[n], w) for n, w in _final(out, 2)[0].items())

    assert resumes_unbroken()
    path = out / "run" / "checkpoints" / "step_2" / "stage_0.pt"
    saved = torch.load(path, weights_only=True)
    stage = saved["stage"]
    (own,) = stage["replicas"]
    assert own["in_flight"], "stage 0 of 2 keeps a micro-batch in flight under asp"
    newest = [stage["weights"]] * len(stage["versions"])
    torch.save({**saved, "stage": {**stage, "versions": newest}}, path)
    assert not resumes_unbroken()
    rng = [(i, v, own["rng"]) for i, v, _ in own["in_flight"]]
    torch.save({**saved, "stage": {**stage, "replicas": [{**own, "in_flight": rng}]}}, path)
    assert not resumes_unbroken()


WRITER = textwrap.dedent(
    """
    import dataclasses
    import sys
    from pathlib import Path
    import torch
    from vpipe.runtime import checkpoint
    from vpipe.common.optim import Updater

    folder, identity = Path(sys.argv[1]), checkpoint.identity("p", "1f1b", "sgd")
    alone = checkpoint.ReplicaState(buffers={}, in_flight=(), rng={})
    small = checkpoint.StageState(
        weights={"w": torch.ones(4)}, versions=(), replicas=(alone,), skipped=0
    )
    checkpoint.save(folder, 1, 0, 1, small, Updater("sgd", 0.1), identity, 2)
    # 512 MiB: a long write
    large = dataclasses.replace(small, weights={"w": torch.zeros(128 * 2**20)})
    checkpoint.save(folder, 2, 0, 1, large, Updater("sgd", 0.1), identity, 2)
    """
)


def test_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    folder = tmp_path / "checkpoints"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)])
    partial = folder / "step_2" / ".stage_0.pt.tmp"
    deadline = time.monotonic() + 60
    while not (partial.is_file() and partial.stat().st_size > 0):
        assert writer.poll() is None and time.monotonic() < deadline, "the write was not caught"
        time.sleep(0.001)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert not (folder / "step_2" / "stage_0.pt").exists()
    assert checkpoint.newest_complete(folder, 1) == 1
    identity = checkpoint.identity("p", "1f1b", "sgd")
    expected = checkpoint.StageTensors(weights={"w": torch.empty(4)}, buffers={})
    cpu = torch.device("cpu")
    saved, _ = checkpoint.load(folder, 1, 0, Updater("sgd", 0.1), identity, expected, cpu)
    assert torch.equal(saved.weights["w"], torch.ones(4))


@pytest.fixture
def mlp_pipeline(tmp_path):
    out = generate(plan(profile("mlp", tmp_path), 2, tmp_path, False), tmp_path / "out")
    return out / "pipeline.yaml"


def test_bad_resumes_are_refused(mlp_pipeline, tmp_path, capfd):
    pipeline = str(mlp_pipeline)
    assert train_main([pipeline, "--steps", "2", "--resume"]) == 2
    assert "holds no checkpoint that every stage finished" in capfd.readouterr().err

    assert train_main([pipeline, "--steps", "2", "--checkpoint-every", "1", *COMMON]) == 0
    folder = mlp_pipeline.parent / "run" / "checkpoints"
    written = {p: p.read_bytes() for p in folder.rglob("*.pt")}
    capfd.readouterr()
    # a new run would write over them: refused, nothing touched
    assert train_main([pipeline, "--steps", "2", "--checkpoint-every", "1"]) == 2
    assert "holds checkpoints of an earlier run" in capfd.readouterr().err
    assert train_main([pipeline, "--steps", "2", "--resume"]) == 2
    assert "nothing is left to run; raise --steps" in capfd.readouterr().err
    assert train_main([pipeline, "--steps", "3", "--resume", "--schedule", "1f1b"]) == 2
    err = capfd.readouterr().err
    assert "was written under --schedule asp; resume with it" in err
    assert "planned for asp" not in err  # a refused run says one line: its error
    assert {p: p.read_bytes() for p in folder.rglob("*.pt")} == written
    fresh = ["--checkpoint-dir", str(tmp_path / "fresh"), *COMMON]
    assert train_main([pipeline, "--steps", "1", "--schedule", "1f1b", *fresh]) == 0
    note = "planned for asp; the plan's predictions are for that; 1f1b runs with its M = 1"
    assert note in capfd.readouterr().err  # a run that starts says it

    profiled = tmp_path / "mlp.profile.yaml"
    other = generate(plan(profiled, 2, tmp_path, False, "--schedule", "gpipe"), tmp_path / "b")
    argv = ["--checkpoint-dir", str(folder), "--resume", "--steps", "3"]
    assert train_main([str(other / "pipeline.yaml"), *argv]) == 2
    assert "belongs to another plan" in capfd.readouterr().err
    assert {p: p.read_bytes() for p in folder.rglob("*.pt")} == written


def test_fewer_processes_than_stages(mlp_pipeline, monkeypatch, capfd):
    """Started by torchrun with one process for a two-stage pipeline."""
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert train_main([str(mlp_pipeline), "--steps", "1"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        "vpipe-train: error: this pipeline has 2 stages and runs as 2 processes, one per "
        "stage; 1 was started (torchrun --nproc-per-node 2, or --nnodes x --nproc-per-node "
        "making 2)"
    ]


def test_resuming_a_finished_asp_run_fills_the_pipeline_again(tmp_path):
    """An asp run drains at its end, so its last checkpoint holds none of the micro-batches a
    longer run would have in flight (resuming it crashed). Resumed for more steps, the
    pipeline fills again from there, as a new run would: every step is logged once."""
    out = generate(plan(profile("mlp", tmp_path), 3, tmp_path, False), tmp_path / "out")
    argv = [str(out / "pipeline.yaml"), *COMMON]
    assert train_main([*argv, "--steps", "6", "--checkpoint-every", "3"]) == 0
    first = _rows(out)
    assert train_main([*argv, "--steps", "10", "--resume"]) == 0
    rows = _rows(out)
    assert [step for step, _ in rows] == [str(s) for s in range(10)]
    assert rows[:6] == first
