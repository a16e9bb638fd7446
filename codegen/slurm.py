"""out/vpipe.sbatch: a slurm batch script that trains the generated pipeline across nodes.

slurm starts one torchrun agent per node (srun, --ntasks-per-node=1); the agents meet at the
allocation's first host (c10d rendezvous) and each starts its node's share of the pipeline's
processes. torchrun numbers ranks node by node, so a node runs consecutive ranks: a stage's
replicas and adjacent stages share a node, and only the links between nodes cross the network.
Pure text from the pipeline config and vpipe-gen's arguments.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from vpipe.codegen.render import template
from vpipe.codegen.schema import Pipeline
from vpipe.common.errors import VpipeError

SCRIPT = "vpipe.sbatch"
# torchrun's default; a job whose head node has it taken sets VPIPE_RDZV_PORT when submitting
RDZV_PORT = 29500
# what torchrun runs in each process: vpipe-train's module (`python -m` of the venv torchrun is
# in, so no path to the vpipe-train script is needed on the nodes)
TRAIN_MODULE = "vpipe.runtime.cli"


@dataclass(frozen=True)
class NodeShare:
    """The ranks one node runs, and the stages they hold."""

    node: int
    ranks: range
    stages: tuple[int, ...]

    def __str__(self) -> str:
        first, last = self.ranks[0], self.ranks[-1]
        ranks = f"ranks {first}-{last}" if last > first else f"rank {first}"
        stages = ", ".join(str(s) for s in self.stages)
        return f"node {self.node}: {ranks}, stage{'s' if len(self.stages) > 1 else ''} {stages}"


@dataclass(frozen=True)
class Placement:
    """How a pipeline's processes spread over nodes: the same number on every node (torchrun
    starts --nproc-per-node on each), consecutive ranks together."""

    world_size: int
    per_node: int

    @property
    def nodes(self) -> int:
        return -(-self.world_size // self.per_node)  # whole nodes: world_size is a multiple

    def shares(self, pipeline: Pipeline) -> tuple[NodeShare, ...]:
        stage_of = {rank: stage.index for stage in pipeline.stages for rank in stage.ranks}
        shares = []
        for node in range(self.nodes):
            ranks = range(node * self.per_node, (node + 1) * self.per_node)
            stages = tuple(sorted({stage_of[rank] for rank in ranks}))
            shares.append(NodeShare(node, ranks, stages))
        return tuple(shares)


def world_size(pipeline: Pipeline) -> int:
    """The processes the pipeline runs as: every rank any stage names."""
    return len({rank for stage in pipeline.stages for rank in stage.ranks})


def placement(processes: int, gpus_per_node: int | None) -> Placement:
    """`processes` over nodes of `gpus_per_node` each (None: all on one node). torchrun starts
    the same number on every node, so a count that leaves a node part-filled is refused."""
    if gpus_per_node is None:
        return Placement(processes, processes)
    if gpus_per_node < 1:
        raise VpipeError(f"--gpus-per-node must be at least 1 (got {gpus_per_node})")
    if processes % gpus_per_node:
        divisors = ", ".join(str(d) for d in range(1, processes + 1) if processes % d == 0)
        raise VpipeError(
            f"this pipeline runs as {processes} processes, which do not fill nodes of "
            f"{gpus_per_node} evenly (torchrun starts as many on every node): choose a "
            f"--gpus-per-node that divides {processes} ({divisors})"
        )
    return Placement(processes, gpus_per_node)


def sbatch_text(
    pipeline: Pipeline, pipeline_path: str, plan: str, gpus_per_node: int | None
) -> str:
    """The batch script for `pipeline`, which lives at `pipeline_path` as seen from where the
    job is submitted; `plan` is the plan as vpipe-gen was given it (for the header)."""
    where = placement(world_size(pipeline), gpus_per_node)
    return template("slurm.sbatch.j2").render(
        plan=plan,
        gpus_per_node=gpus_per_node,
        placement=where,
        shares=where.shares(pipeline),
        script=shlex.quote(str(Path(pipeline_path).with_name(SCRIPT))),
        job_name=job_name(pipeline_path),
        pipeline=shlex.quote(pipeline_path),
        port=RDZV_PORT,
        module=TRAIN_MODULE,
    )


def job_name(pipeline_path: str) -> str:
    """vpipe-<the output folder's name>, in the characters every scheduler accepts."""
    folder = Path(pipeline_path).resolve().parent.name
    return "vpipe-" + re.sub(r"[^A-Za-z0-9._-]+", "-", folder).strip("-")


def write_sbatch(
    pipeline: Pipeline,
    directory: Path,
    out: Path,
    plan: str,
    gpus_per_node: int | None,
) -> Path:
    """Write `directory`/vpipe.sbatch for the pipeline that will be at `out`/pipeline.yaml
    (`directory` is where vpipe-gen assembles out/ before it replaces it)."""
    text = sbatch_text(pipeline, str(out / "pipeline.yaml"), plan, gpus_per_node)
    path = directory / SCRIPT
    path.write_text(text)
    path.chmod(0o755)  # sbatch reads it either way; a script with a #! line, run as one
    return path
