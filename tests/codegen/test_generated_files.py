"""The generated text itself: a golden copy, determinism, lint (bad inputs:
tests/test_bad_inputs.py)."""

import dataclasses
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vpipe.codegen.schema import load_pipeline
from vpipe.planner.schema import load_plan, save_plan

from .pipelines import generate, plan, profile

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def mlp_plan(tmp_path_factory):
    """A fixed 2-stage split of the bundled MLP, recomputing nodes 1-2 of each stage."""
    directory = tmp_path_factory.mktemp("mlp")
    planned = load_plan(plan(profile("mlp", directory), 2, directory, recompute=True))
    halves = [n for s in planned.stages for n in s.nodes]
    stages = tuple(
        dataclasses.replace(stage, nodes=tuple(nodes), recompute=tuple(nodes[1:3]))
        for stage, nodes in zip(planned.stages, (halves[:4], halves[4:]), strict=True)
    )
    path = directory / "plan.yaml"
    save_plan(dataclasses.replace(planned, stages=stages), path)
    return path


def _masked(text: str) -> str:
    return re.sub(r"[0-9a-f]{64}", "<sha256>", text)


def test_golden_stage_files(mlp_plan, tmp_path, monkeypatch):
    """Any change to the generated code shows up here as a diff; after a deliberate change,
    refresh with VPIPE_UPDATE_GOLDEN=1 pytest tests/codegen/test_generated_files.py."""
    monkeypatch.chdir(mlp_plan.parent)
    out = generate(Path("plan.yaml"), tmp_path / "out")
    for name in ("stage_0.py", "stage_1.py"):
        text = _masked((out / name).read_text())
        if os.environ.get("VPIPE_UPDATE_GOLDEN"):
            (GOLDEN / name).write_text(text)
        assert text == (GOLDEN / name).read_text(), name


def test_same_plan_same_bytes(mlp_plan, tmp_path):
    first = generate(mlp_plan, tmp_path / "a")
    second = generate(mlp_plan, tmp_path / "b")
    for name in ("stage_0.py", "stage_1.py", "pipeline.yaml"):
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_pipeline_records_each_stage_file_as_written(mlp_plan, tmp_path):
    """The sha256 that tells an edited stage file from one as generated."""
    out = generate(mlp_plan, tmp_path / "out")
    for stage in load_pipeline(out / "pipeline.yaml").stages:
        written = (out / stage.module.partition(":")[0]).read_bytes()
        assert stage.module_sha256 == hashlib.sha256(written).hexdigest()


def test_generated_files_lint_and_compile(mlp_plan, tmp_path):
    out = generate(mlp_plan, tmp_path / "out")
    files = [str(out / "stage_0.py"), str(out / "stage_1.py")]
    for file in files:
        subprocess.run([sys.executable, "-m", "py_compile", file], check=True)
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([ruff, "check", "--isolated", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_generating_again_replaces_only_what_vpipe_gen_writes(mlp_plan, tmp_path):
    """A run's results, a copy of the plan inside out/ and a note of the user's survive a second
    vpipe-gen into the same out/; a stale stage file of the first does not."""
    out = generate(mlp_plan, tmp_path / "out")
    (out / "run").mkdir()
    (out / "run" / "metrics.csv").write_text("step,loss\n0,1.0\n")
    (out / "notes.txt").write_text("mine\n")
    (out / "stage_7.py").write_text("# left by an older plan\n")
    copy = out / "plan.yaml"
    save_plan(load_plan(mlp_plan), copy)  # its profile's path recorded from out/
    saved = copy.read_bytes()
    generate(copy, out)  # the plan it reads lives in the folder it replaces
    assert (out / "run" / "metrics.csv").read_text() == "step,loss\n0,1.0\n"
    assert (out / "notes.txt").read_text() == "mine\n"
    assert copy.read_bytes() == saved
    assert not (out / "stage_7.py").exists()
    assert sorted(p.name for p in out.iterdir()) == [
        "notes.txt",
        "pipeline.yaml",
        "plan.yaml",
        "run",
        "stage_0.py",
        "stage_1.py",
        "vpipe.sbatch",
        "weights",
    ]
    assert not list(tmp_path.glob(".out*"))  # nothing left aside
