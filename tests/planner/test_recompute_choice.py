"""`vpipe-plan --recompute never|all`: a plan with no recompute or with all of it, for comparing
vpipe's per-stage choice against, and a cap below which never finds nothing."""

from vpipe.planner.cli import main as plan_main
from vpipe.planner.schema import load_plan
from vpipe.profiler.schema import load_profile

from ..codegen.pipelines import plan, profile, straight


def test_never_all_and_auto_under_a_cap(tmp_path, capsys):
    profiled = profile("gpt", tmp_path)

    def planned(choice, cap_gib):
        path = tmp_path / f"{choice}.yaml"
        argv = [
            str(profiled),
            *straight(2),
            "--memory",
            repr(cap_gib),
            "--recompute",
            choice,
        ]
        status = plan_main([*argv, "-o", str(path), "-q"])
        return load_plan(path) if status == 0 else None

    free = load_plan(plan(profiled, 2, tmp_path, False))
    low, high = 0.0, max(s.predicted.memory.total for s in free.stages) / 2**30 / 0.9 * 1.01
    for _ in range(12):  # the least cap at which some split fits with no recompute at all
        middle = (low + high) / 2
        low, high = (low, middle) if planned("never", middle) else (middle, high)
    cap = low * 0.97
    capsys.readouterr()
    assert planned("never", cap) is None  # proven: the dp is exact on this graph
    assert "--recompute auto" in capsys.readouterr().err
    auto = planned("auto", cap)
    assert any(s.recompute for s in auto.stages)
    assert all(s.predicted.memory.total <= cap * 0.9 * 2**30 for s in auto.stages)

    # all: auto's split, every stage recomputing its whole forward (one segment a stage)
    plain, everything = planned("auto", float("inf")), planned("all", float("inf"))
    inputs = {n.name for n in load_profile(profiled).nodes if n.op == "placeholder"}
    for stage, same in zip(everything.stages, plain.stages, strict=True):
        assert stage.nodes == same.nodes
        assert set(stage.recompute) == set(stage.nodes) - inputs
    assert everything.predicted.time_per_minibatch_ms > plain.predicted.time_per_minibatch_ms
