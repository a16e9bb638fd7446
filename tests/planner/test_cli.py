"""vpipe-plan as a user runs it: the plan it writes, determinism (bad inputs:
tests/test_bad_inputs.py)."""

import pytest

from vpipe.planner.cli import main
from vpipe.planner.schema import load_plan
from vpipe.profiler.cli import main as profile_main
from vpipe.profiler.schema import load_profile

from ..codegen.pipelines import QUICK_PROFILE, straight


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "profile.yaml"
    assert profile_main(["vpipe.models.gpt", "-o", str(path), *QUICK_PROFILE]) == 0
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_writes_a_valid_plan_and_plot(profile_path, tmp_path, capsys):
    out, png = tmp_path / "plan.yaml", tmp_path / "plan.png"
    code, stdout, _ = run([profile_path, *straight(3), "-o", out, "--plot", png], capsys)
    assert code == 0 and "proven optimal" in stdout, stdout
    plan = load_plan(out)
    profile = load_profile(profile_path)
    placed = [n for s in plan.stages for n in s.nodes]  # stages need not be runs of the order
    assert sorted(placed) == sorted(n.name for n in profile.nodes)
    assert plan.solver.optimal and len(plan.baselines) == 2
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_same_input_same_bytes(profile_path, tmp_path, capsys):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    for out in (first, second):
        assert (
            run(
                [
                    profile_path,
                    *straight(4),
                    "--memory",
                    "0.008",
                    "-o",
                    out,
                    "-q",
                ],
                capsys,
            )[0]
            == 0
        )
    assert first.read_bytes() == second.read_bytes()


def test_memory_cap_forces_recompute(profile_path, tmp_path, capsys):
    """One stage has one split, so 80% of its memory can only be met by recomputing."""
    free = tmp_path / "free.yaml"
    tight = tmp_path / "tight.yaml"
    assert run([profile_path, "--gpus", "1", "-o", free, "-q"], capsys)[0] == 0
    need = load_plan(free).stages[0].predicted.memory.total
    cap_gib = need * 0.8 / 2**30 / 0.9  # 80% of the need, before the 10% headroom
    assert (
        run([profile_path, "--gpus", "1", "--memory", cap_gib, "-o", tight, "-q"], capsys)[0] == 0
    )
    stage = load_plan(tight).stages[0]
    assert stage.recompute and stage.predicted.recompute_ms > 0
    assert stage.predicted.memory.total <= need * 0.8


def test_memory_takes_a_unit(profile_path, tmp_path, capsys):
    in_gib, in_mib = tmp_path / "gib.yaml", tmp_path / "mib.yaml"
    argv = [profile_path, *straight(2), "-q"]
    assert run([*argv, "--memory", "0.0078125", "-o", in_gib], capsys)[0] == 0  # 8 MiB
    assert run([*argv, "--memory", "8MiB", "-o", in_mib], capsys)[0] == 0
    assert load_plan(in_mib).settings == load_plan(in_gib).settings
    assert load_plan(in_mib).settings.memory_bytes == pytest.approx(8 * 2**20 * 0.9)
