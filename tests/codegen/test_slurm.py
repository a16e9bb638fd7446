"""out/vpipe.sbatch: its #SBATCH lines for several shapes, a refused --gpus-per-node, and the
script itself run with bash under stand-ins for slurm's srun and scontrol, training as a
one-machine run does."""

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vpipe.codegen.cli import main as generate_main
from vpipe.codegen.schema import Pipeline, load_pipeline
from vpipe.codegen.slurm import SCRIPT, sbatch_text
from vpipe.common.errors import VpipeError
from vpipe.planner.schema import load_plan, save_plan
from vpipe.runtime.cli import main as train_main

from ..runtime.test_faults import _port
from .pipelines import generate, plan, profile

# srun as slurm runs a batch script's `srun cmd` with --ntasks-per-node=1: the command once per
# node, all at once, each told its node, and waited for. A node here is a folder, node<n>/, in
# which its task starts: that node's view of the directory vpipe-gen ran in
SRUN = """\
#!/bin/bash
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
    (cd "node$node" && SLURM_NODEID=$node SLURM_PROCID=$node exec "$@") &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""
# `scontrol show hostnames`: one host a line, every node on loopback
SCONTROL = """\
#!/bin/bash
for ((node = 0; node < SLURM_NNODES; node++)); do echo 127.0.0.1; done
"""
STEPS = ["--steps", "3", "--threads", "1", "--timeout-s", "60"]
TIMEOUT_S = 90


@pytest.fixture(scope="module")
def mlp_two(tmp_path_factory) -> Path:
    """The bundled MLP's 2-stage plan."""
    directory = tmp_path_factory.mktemp("mlp")
    return plan(profile("mlp", directory), 2, directory, False)


@pytest.fixture(scope="module")
def pipeline(mlp_two) -> Pipeline:
    return load_pipeline(generate(mlp_two, mlp_two.parent / "out") / "pipeline.yaml")


def _stages(pipeline: Pipeline, count: int) -> Pipeline:
    """`pipeline` with `count` stages, one rank each: the script reads nothing else of them."""
    stage = pipeline.stages[0]
    stages = tuple(dataclasses.replace(stage, index=k, ranks=(k,)) for k in range(count))
    return dataclasses.replace(pipeline, stages=stages)


def _sbatch(text: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([a-z-]+)=(\S+)$", text, flags=re.MULTILINE))


@pytest.mark.parametrize(
    ("stages", "per_node", "nodes", "gpus"),
    [(2, None, 1, 2), (2, 1, 2, 1), (4, 2, 2, 2), (6, 3, 2, 3), (6, 2, 3, 2), (8, 8, 1, 8)],
)
def test_sbatch_lines(pipeline, stages, per_node, nodes, gpus):
    text = sbatch_text(_stages(pipeline, stages), "runs/a b/pipeline.yaml", "plan.yaml", per_node)
    assert _sbatch(text) == {
        "job-name": "vpipe-a-b",
        "nodes": str(nodes),
        "ntasks-per-node": "1",
        "gpus-per-node": str(gpus),
    }
    assert f"--nproc-per-node {gpus} " in text
    assert "-m vpipe.runtime.cli 'runs/a b/pipeline.yaml' \"$@\"" in text
    # consecutive ranks on a node, said in the header
    for node in range(nodes):
        first, last = node * gpus, node * gpus + gpus - 1
        ranks = f"ranks {first}-{last}" if gpus > 1 else f"rank {first}"
        assert f"#     node {node}: {ranks}, stage" in text
    # sbatch reads #SBATCH lines only before the first command
    first_command = text.index("\nset -eu")
    assert all(m.start() < first_command for m in re.finditer("#SBATCH", text))


def test_every_rank_counts(pipeline):
    """A stage of several ranks (replicas) puts them all in the world size, and on nodes in
    rank order."""
    two = _stages(pipeline, 2)
    stages = tuple(
        dataclasses.replace(stage, ranks=ranks)
        for stage, ranks in zip(two.stages, ((0, 1, 2), (3,)), strict=True)
    )
    text = sbatch_text(dataclasses.replace(two, stages=stages), "out/pipeline.yaml", "p", 2)
    assert _sbatch(text)["nodes"] == "2"
    assert "#     node 0: ranks 0-1, stage 0\n#     node 1: ranks 2-3, stages 0, 1\n" in text


@pytest.mark.parametrize(("stages", "per_node"), [(3, 2), (4, 3), (2, 4)])
def test_a_node_left_part_filled_is_refused(pipeline, stages, per_node):
    with pytest.raises(VpipeError) as raised:
        sbatch_text(_stages(pipeline, stages), "out/pipeline.yaml", "plan.yaml", per_node)
    divisors = ", ".join(str(d) for d in range(1, stages + 1) if stages % d == 0)
    assert str(raised.value) == (
        f"this pipeline runs as {stages} processes, which do not fill nodes of {per_node} "
        f"evenly (torchrun starts as many on every node): choose a --gpus-per-node that "
        f"divides {stages} ({divisors})"
    )


def test_vpipe_gen_writes_and_replaces_the_script(mlp_two, tmp_path, capsys):
    """One more line of output; a second vpipe-gen rewrites the script; a bad --gpus-per-node
    fails as every bad input does (one line, status 2) and leaves out/ as it was."""
    out = tmp_path / "out"
    assert generate_main([str(mlp_two), "-o", str(out), "--gpus-per-node", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[-2:] == [
        f"wrote {out}/pipeline.yaml",
        f"wrote {out}/{SCRIPT}",
    ]
    assert _sbatch((out / SCRIPT).read_text())["nodes"] == "2"
    assert generate_main([str(mlp_two), "-o", str(out), "-q"]) == 0
    written = (out / SCRIPT).read_text()
    assert _sbatch(written)["nodes"] == "1"
    assert generate_main([str(mlp_two), "-o", str(out), "--gpus-per-node", "3"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("vpipe-gen: error: this pipeline runs as 2 processes")
        and err.count("\n") == 1
    )
    assert generate_main([str(mlp_two), "-o", str(out), "--gpus-per-node", "0"]) == 2
    assert "--gpus-per-node: must be at least 1 (got 0)" in capsys.readouterr().err
    assert (out / SCRIPT).read_text() == written
    assert not list(tmp_path.glob(".out*"))  # nothing left aside


@pytest.fixture(scope="module")
def mlp_replicated(tmp_path_factory) -> Path:
    """The bundled MLP's 2 stages under 1f1b (4 micro-batches a step), each given 2
    data-parallel replicas: 4 processes, ranks (0, 1) and (2, 3) as vpipe-gen assigns them."""
    directory = tmp_path_factory.mktemp("mlp_replicated")
    path = plan(profile("mlp", directory), 2, directory, False, "--schedule", "1f1b")
    planned = load_plan(path)
    stages = tuple(dataclasses.replace(stage, replicas=2) for stage in planned.stages)
    settings = dataclasses.replace(planned.settings, gpus=4, microbatches=4)
    save_plan(dataclasses.replace(planned, stages=stages, settings=settings), path)
    return path


@pytest.mark.parametrize(
    ("layout", "per_node", "shared"),
    [("mlp_two", 1, False), ("mlp_replicated", 2, False), ("mlp_two", 1, True)],
    ids=["2 stages on 2 nodes", "2 stages x 2 replicas on 2 nodes", "2 nodes sharing out/"],
)
def test_the_script_trains_as_one_machine_does(
    request, layout, per_node, shared, tmp_path, monkeypatch
):
    """`bash out/vpipe.sbatch` as sbatch would run it on 2 nodes of `per_node` processes: srun
    starts a torchrun agent per node, the agents meet at the first host, and the run's losses
    and final weights equal `vpipe-train` on one machine. With replicas, a stage's two sit on
    one node (consecutive ranks) and all-reduce there. The nodes have a copy of out/ each, or
    share one (a shared file system: only the run's rank 0 takes out/run/.lock)."""
    planned = request.getfixturevalue(layout)
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    nodes[0].mkdir()
    monkeypatch.chdir(nodes[0])  # the script's paths are relative to where vpipe-gen ran
    argv = [str(planned), "-o", "out", "--gpus-per-node", str(per_node), "-q"]
    assert generate_main(argv) == 0
    monkeypatch.chdir(tmp_path)
    if shared:
        nodes[1].symlink_to(nodes[0], target_is_directory=True)
    else:
        shutil.copytree(nodes[0] / "out", nodes[1] / "out")
    shutil.copytree(nodes[0] / "out", tmp_path / "one" / "out")
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (stand_ins / name).write_text(text)
        (stand_ins / name).chmod(0o755)
    env = {
        **os.environ,
        # the stand-ins first, then the venv's torchrun
        "PATH": os.pathsep.join(
            [str(stand_ins), str(Path(sys.executable).parent), os.environ["PATH"]]
        ),
        "SLURM_JOB_NODELIST": "node[0-1]",
        "SLURM_NNODES": "2",
        "SLURM_JOB_ID": "4242",
        "VPIPE_RDZV_PORT": str(_port()),
    }
    status, stdout, stderr = _run_job(["bash", str(nodes[0] / "out" / SCRIPT), *STEPS], env)
    assert status == 0, stderr[-3000:]
    assert f"world_size: {2 * per_node}" in stdout

    assert train_main([str(tmp_path / "one" / "out" / "pipeline.yaml"), *STEPS]) == 0
    one = tmp_path / "one" / "out" / "run"
    # which agent gets node rank 0 is the rendezvous's choice: each rank's files are on its node
    found = {p.name: p for node in nodes for p in (node / "out" / "run").iterdir()}
    assert _losses(found["metrics.csv"]) == _losses(one / "metrics.csv")
    assert len(_losses(one / "metrics.csv")) == 3
    for k in range(2):
        mine = torch.load(found[f"final_stage_{k}.pt"])
        torch.testing.assert_close(mine, torch.load(one / f"final_stage_{k}.pt"), rtol=0, atol=0)


def _run_job(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run the job in a process group of its own, ended when the job is done or has taken too
    long: a stuck agent must not outlive the test."""
    job = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = job.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stdout, stderr = "", f"the job ran past {TIMEOUT_S} s"
    finally:
        _end_group(job.pid)
        job.wait()
    return job.returncode, stdout, stderr


def _end_group(group: int) -> None:
    """SIGTERM first (a torchrun agent stops its workers, in sessions of their own, on it), then
    SIGKILL whatever is left after a few seconds; nothing to do for a group already gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        deadline = time.monotonic() + 5
        try:
            os.killpg(group, sig)
            while time.monotonic() < deadline:
                time.sleep(0.1)
                os.killpg(group, 0)
        except ProcessLookupError:
            return


def _losses(metrics: Path) -> list[str]:
    return [row.split(",")[1] for row in metrics.read_text().splitlines()[1:]]
