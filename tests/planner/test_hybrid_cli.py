"""`vpipe-plan --gpus N [--stages S]`: plans with data-parallel replicas as a user writes them,
their figures against PipeDream's hybrid plans (BASELINES.md) and the pipeline config's ranks."""

from pathlib import Path

import pytest

from vpipe.codegen.generate import stage_ranks
from vpipe.planner.cli import main
from vpipe.planner.schema import load_plan
from vpipe.profiler.cli import main as profile_main

PIPEDREAM = Path(__file__).resolve().parents[3] / "shared" / "profiles" / "pipedream"


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    path = tmp_path_factory.mktemp("r") / "resnet50.yaml"
    source = PIPEDREAM / "resnet50.graph.txt"
    assert profile_main(["--import-pipedream", str(source), "-o", str(path), "-q"]) == 0
    return path


def plan(profile, tmp_path, capsys, *args):
    out = tmp_path / "plan.yaml"
    code = main([str(profile), "-o", str(out), *map(str, args)])
    stdout, _ = capsys.readouterr()
    assert code == 0, stdout
    return load_plan(out), stdout


def test_gpus_alone_finds_replicas_and_says_what_they_gain(resnet50, tmp_path, capsys):
    """ResNet-50 on 8 GPUs at 1 GB/s: 5 + 3 replicas over 2 stages. With a ring all-reduce
    75.086 ms (PipeDream's own term gives its 92.012 ms: tests/planner/test_hybrid.py and
    benchmarks/hybrid_vs_pipedream.py); the best straight pipeline 256.901 ms. `--stages auto`
    is the default: the same plan."""
    found, stdout = plan(resnet50, tmp_path, capsys, "--gpus", 8, "--bandwidth", 1)
    auto, _ = plan(resnet50, tmp_path, capsys, "--gpus", 8, "--bandwidth", 1, "--stages", "auto")
    assert auto == found
    assert [s.replicas for s in found.stages] == [5, 3]
    assert max(s.predicted.time_ms for s in found.stages) == pytest.approx(75.086, abs=1e-3)
    assert found.solver.name == "hybrid" and found.solver.optimal
    assert "2 stages on 8 processes" in stdout
    assert "vs best straight (3 stages, no replicas) split: 256.901 ms (3.42x)" in stdout
    assert stage_ranks(found) == ((0, 1, 2, 3, 4), (5, 6, 7))


def test_pinned_stages_one_or_all_straight(resnet50, tmp_path, capsys):
    one, _ = plan(resnet50, tmp_path, capsys, "--gpus", 4, "--bandwidth", 10, "--stages", 1)
    assert [s.replicas for s in one.stages] == [4]
    straight, stdout = plan(
        resnet50, tmp_path, capsys, "--gpus", 4, "--stages", 4, "--bandwidth", 10
    )
    assert [s.replicas for s in straight.stages] == [1, 1, 1, 1]
    assert "processes" not in stdout and "replicas" not in stdout
    assert stage_ranks(straight) == ((0,), (1,), (2,), (3,))
    assert all(s.predicted.allreduce_ms == 0 for s in straight.stages)


def test_auto_keeps_the_straight_pipeline_where_replicas_cannot_help(resnet50, tmp_path, capsys):
    """At 10 GB/s on 4 GPUs PipeDream's best is the straight pipeline (0.111497 s): so is
    vpipe's, planned by the straight solvers (which recompute under a cap)."""
    found, stdout = plan(resnet50, tmp_path, capsys, "--gpus", 4, "--bandwidth", 10)
    assert max(s.predicted.time_ms for s in found.stages) == pytest.approx(111.497, abs=1e-3)
    assert found.solver.name != "hybrid"
    # and says why it has no replicas: the best plan with them is no faster
    said = [note for note in found.notes if note.startswith("no replicas:")]
    assert len(said) == 1 and f"note: {said[0]}" in " ".join(stdout.split())  # lines wrap
    assert "is no faster" in said[0] or "no plan that replicates a stage" in said[0]


@pytest.mark.parametrize(
    "option", [("--split", "uniform"), ("--recompute", "all"), ("--stage-speeds", 1, 1, 2, 1)]
)
def test_straight_only_options_plan_straight_pipelines(resnet50, tmp_path, capsys, option):
    """At 1 GB/s on 4 GPUs replicas would win (as on 8), but a rule's split, recompute-all
    and per-device speeds are for straight pipelines: one stage per GPU, no replicas."""
    found, _ = plan(resnet50, tmp_path, capsys, "--gpus", 4, "--bandwidth", 1, *option)
    assert [s.replicas for s in found.stages] == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--gpus", 2, "--stages", 3), "--stages 3 is more than --gpus 2"),
        (("--gpus", 4, "--stages", 2, "--split", "uniform"), "--split uniform plans straight"),
        (("--gpus", 4, "--stages", 2, "--stage-speeds", 1, 2, 1, 1), "leave out --stages"),
        (("--gpus", 4, "--stages", 0), "must be at least 1"),
        (("--gpus", 4, "--stages", "two"), "not a whole number or auto"),
    ],
)
def test_bad_stage_counts_are_refused(resnet50, tmp_path, capsys, args, message):
    code = main([str(resnet50), "-o", str(tmp_path / "p.yaml"), *map(str, args)])
    out, err = capsys.readouterr()
    assert code != 0 and message in out + err
