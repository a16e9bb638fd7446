"""A synchronous run stopped after a checkpoint and resumed ends bitwise as an unbroken run."""

import shutil

import torch

from vpipe.runtime.cli import main as train_main

from ..codegen.pipelines import generate, plan, profile


def _final(out, stages=2):
    return [torch.load(out / "run" / f"final_stage_{k}.pt") for k in range(stages)]


def test_resume_equals_an_unbroken_run(tmp_path):
    argv = ["--schedule", "1f1b", "--microbatches", "2"]
    fresh = generate(plan(profile("gpt", tmp_path, 2), 2, tmp_path, False, *argv), tmp_path / "a")
    broken = tmp_path / "b"
    shutil.copytree(fresh, broken)
    common = ["--optimizer", "momentum", "--lr", "0.05", "--threads", "1"]
    assert train_main([str(fresh / "pipeline.yaml"), "--steps", "4", *common]) == 0
    first = [str(broken / "pipeline.yaml"), "--steps", "2", "--checkpoint-every", "1", *common]
    assert train_main(first) == 0
    assert train_main([str(broken / "pipeline.yaml"), "--steps", "4", "--resume", *common]) == 0
    for expected, resumed in zip(_final(fresh), _final(broken), strict=True):
        assert expected.keys() == resumed.keys()
        for name in expected:
            assert torch.equal(expected[name], resumed[name]), name
    rows = (broken / "run" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2", "3"]  # appended, nothing lost
    unbroken = (fresh / "run" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == [r.split(",")[1] for r in unbroken[1:]]


def test_resume_needs_this_plans_checkpoint(tmp_path, capfd):
    profiled = profile("mlp", tmp_path)
    out = generate(plan(profiled, 2, tmp_path, False, "--schedule", "1f1b"), tmp_path / "out")
    assert train_main([str(out / "pipeline.yaml"), "--steps", "2", "--resume"]) == 2
    assert "holds no checkpoint that every stage finished" in capfd.readouterr().err

    argv = [str(out / "pipeline.yaml"), "--steps", "1", "--checkpoint-every", "1"]
    assert train_main(argv) == 0
    other = generate(plan(profiled, 2, tmp_path, False, "--schedule", "gpipe"), tmp_path / "b")
    argv = ["--checkpoint-dir", str(out / "run" / "checkpoints"), "--resume", "--steps", "2"]
    assert train_main([str(other / "pipeline.yaml"), *argv]) == 2
    assert "belongs to another plan" in capfd.readouterr().err
