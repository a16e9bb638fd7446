"""The generated text itself: a golden copy, determinism, lint, and a clear error per bad input."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from vpipe.codegen.cli import main as generate_main
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


def test_generated_files_lint_and_compile(mlp_plan, tmp_path):
    out = generate(mlp_plan, tmp_path / "out")
    files = [str(out / "stage_0.py"), str(out / "stage_1.py")]
    for file in files:
        subprocess.run([sys.executable, "-m", "py_compile", file], check=True)
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([ruff, "check", "--isolated", *files], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def _run(argv, capsys):
    code = generate_main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_profile_changed_since_planning(mlp_plan, tmp_path, capsys):
    plan_copy = tmp_path / "plan.yaml"
    plan_copy.write_text(mlp_plan.read_text())
    profile_path = mlp_plan.parent / load_plan(mlp_plan).profile
    edited = tmp_path / "edited.yaml"
    edited.write_text(Path(profile_path).read_text() + "\n# edited\n")
    text = plan_copy.read_text().replace(str(load_plan(mlp_plan).profile), str(edited))
    plan_copy.write_text(text)
    code, err = _run([plan_copy, "-o", tmp_path / "out"], capsys)
    assert code == 2 and "changed since" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_backward_edge_in_a_hand_edited_plan(mlp_plan, tmp_path, capsys):
    planned = load_plan(mlp_plan)
    first, second = planned.stages
    swapped = (  # the model input moves to stage 1, but stage 0 reads it
        dataclasses.replace(first, nodes=first.nodes[1:], recompute=()),
        dataclasses.replace(second, nodes=(first.nodes[0], *second.nodes)),
    )
    bad = tmp_path / "bad.yaml"
    save_plan(dataclasses.replace(planned, stages=swapped), bad)
    code, err = _run([bad, "-o", tmp_path / "out"], capsys)
    assert code == 2 and "from the later stage 1" in err, err
    assert not (tmp_path / "out").exists()


def test_missing_node_in_a_hand_edited_plan(mlp_plan, tmp_path, capsys):
    planned = load_plan(mlp_plan)
    first, second = planned.stages
    dropped = (first, dataclasses.replace(second, nodes=second.nodes[:-1], recompute=()))
    bad = tmp_path / "bad.yaml"
    save_plan(dataclasses.replace(planned, stages=dropped), bad)
    code, err = _run([bad, "-o", tmp_path / "out"], capsys)
    assert code == 2 and "places no stage on nodes" in err
    assert not (tmp_path / "out").exists()


def test_refuses_to_overwrite_a_foreign_directory(mlp_plan, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, err = _run([mlp_plan, "-o", out], capsys)
    assert code == 2 and "not a vpipe-gen output" in err
    assert (out / "notes.txt").read_text() == "mine"


def test_unwritable_output_directory(mlp_plan, tmp_path, capsys):
    code, err = _run([mlp_plan, "-o", tmp_path / "no" / "such" / "out"], capsys)
    assert code == 2 and "does not exist" in err
