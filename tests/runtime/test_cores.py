"""vpipe-train --bind-cores: the rule that gives each local process its cores, a real 2-stage
run whose stages ran on the cores the rule gives them, and the refusal of too few cores."""

import os

import pytest

from vpipe.common.errors import VpipeError
from vpipe.runtime.cli import main as train_main
from vpipe.runtime.cores import core_block
from vpipe.runtime.settings import load_settings
from vpipe.runtime.stagelog import load_stage_log

from ..codegen.pipelines import generate, plan, profile


@pytest.fixture(scope="module")
def mlp_pipeline(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mlp")
    return generate(plan(profile("mlp", directory), 2, directory, False), directory / "out")


@pytest.mark.parametrize(
    "allowed, processes, blocks",
    [
        (range(8), 2, [(0, 1, 2, 3), (4, 5, 6, 7)]),
        (range(8), 3, [(0, 1), (2, 3), (4, 5)]),  # 6 and 7 left over: equal shares
        ({10, 3, 2, 8, 9}, 2, [(2, 3), (8, 9)]),  # as taskset -c 2,3,8-10 allows: sorted
        ({5, 7}, 2, [(5,), (7,)]),
    ],
)
def test_the_rule_gives_each_process_its_own_block(allowed, processes, blocks):
    assert [core_block(set(allowed), i, processes) for i in range(processes)] == blocks


def test_the_rule_refuses_fewer_cores_than_processes():
    with pytest.raises(VpipeError, match=r"3 processes on this machine but only 2 cores \(4,6\)"):
        core_block({6, 4}, 0, 3)


def test_each_stage_runs_on_its_own_cores(mlp_pipeline, capfd):
    allowed = os.sched_getaffinity(0)
    assert len(allowed) >= 2, "a 2-stage run with --bind-cores needs 2 cores"
    argv = [str(mlp_pipeline / "pipeline.yaml"), "--steps", "3", "--bind-cores"]
    assert train_main(argv) == 0
    printed = capfd.readouterr().out.splitlines()
    run = mlp_pipeline / "run"
    assert load_settings(run / "settings.yaml", "").bind_cores
    logs = [load_stage_log(run / f"stage_{k}.yaml") for k in range(2)]
    for k, log in enumerate(logs):
        # every thread the stage had at its end (torch's, gloo's) could run on its block only
        assert log.cores == core_block(allowed, k, 2)
        assert log.threads == len(log.cores)  # no --threads: one torch thread per own core
        line = (
            f"Finished initializing process group; backend: gloo, rank: {k}, world_size: 2, "
            f"cores: {','.join(map(str, log.cores))}"
        )
        assert line in printed
    assert not set(logs[0].cores) & set(logs[1].cores)
    assert len(logs[0].cores) == len(logs[1].cores) == len(allowed) // 2


def test_too_few_cores_are_refused_before_any_process_starts(mlp_pipeline, capfd):
    allowed = os.sched_getaffinity(0)
    one = min(allowed)
    os.sched_setaffinity(0, {one})  # this test's process may use one core
    try:
        code = train_main([str(mlp_pipeline / "pipeline.yaml"), "--steps", "1", "--bind-cores"])
    finally:
        os.sched_setaffinity(0, allowed)
    assert code == 2
    out, err = capfd.readouterr()
    assert err.strip() == (
        f"vpipe-train: error: --bind-cores: 2 processes on this machine but only 1 core ({one}) "
        "for them to use; allow vpipe-train at least 2 (taskset -c, or the job's CPU "
        "allocation), or leave out --bind-cores to let the processes share the cores"
    )
    assert "Finished initializing" not in out


def test_a_process_computes_on_as_many_threads_as_it_has_cores(mlp_pipeline, tmp_path):
    """One stage, the test's process allowed one core: one torch thread, though shared out the
    machine's cores would give it os.cpu_count()."""
    directory = mlp_pipeline.parent
    one_stage = generate(plan(directory / "mlp.profile.yaml", 1, tmp_path, False), tmp_path / "out")
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        argv = [str(one_stage / "pipeline.yaml"), "--steps", "2", "--bind-cores"]
        assert train_main(argv) == 0
    finally:
        os.sched_setaffinity(0, allowed)
    log = load_stage_log(one_stage / "run" / "stage_0.yaml")
    assert (log.cores, log.threads) == ((min(allowed),), 1)
