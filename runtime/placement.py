"""Where each process sits: its stage, its place among the stage's data-parallel replicas, the
ranks of its neighbours' replicas, and the names of its files in run/. No torch here: the
report reads the files by these names.

pipeline.yaml's `ranks` list each stage's replicas, consecutive and in stage order (stage 0:
ranks 0 .. r0 - 1, stage 1: r0 .. r0 + r1 - 1, ...), so the world is their sum. A stage with
one process keeps the names of a straight pipeline (`events_stage<k>.csv`, `stage_<k>.yaml`);
a replicated stage's processes add `_replica<i>`. Final weights and checkpoints are the
stage's, written by its replica 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from vpipe.codegen.schema import Pipeline
from vpipe.common.errors import VpipeError


@dataclass(frozen=True)
class Placement:
    rank: int
    stage: int
    stages: int
    ranks: tuple[int, ...]  # this stage's replicas, in order
    before: tuple[int, ...]  # the previous stage's replicas (none on stage 0)
    after: tuple[int, ...]  # the next stage's (none on the last)
    workers_from_here: int  # processes of this stage and the stages after it

    @property
    def replica(self) -> int:
        return self.ranks.index(self.rank)

    @property
    def replicas(self) -> int:
        return len(self.ranks)

    @property
    def last(self) -> bool:
        return self.stage == self.stages - 1

    def sender(self, microbatch: int) -> int:
        """The rank that sends this process `microbatch`'s activations."""
        return self.before[microbatch % len(self.before)]

    def receiver(self, microbatch: int) -> int:
        """The rank this process sends `microbatch`'s activations to."""
        return self.after[microbatch % len(self.after)]

    def own(self, first: int, end: int) -> range:
        """This replica's micro-batches among first .. end - 1 (every r-th)."""
        return range(first + (self.replica - first) % self.replicas, end, self.replicas)

    @property
    def name(self) -> str:
        """How messages name this process: `stage 1`, or `stage 1 replica 0 (rank 2)`."""
        if self.replicas == 1:
            return f"stage {self.stage}"
        return f"stage {self.stage} replica {self.replica} (rank {self.rank})"

    @property
    def suffix(self) -> str:
        return "" if self.replicas == 1 else f"_replica{self.replica}"

    @property
    def events_file(self) -> str:
        return f"events_stage{self.stage}{self.suffix}.csv"

    @property
    def log_file(self) -> str:
        return f"stage_{self.stage}{self.suffix}.yaml"


def placements(pipeline: Pipeline) -> list[Placement]:
    """Every process of the pipeline, in rank order; the ranks checked against the rule."""
    check_ranks(pipeline)
    stages = pipeline.stages
    return [
        Placement(
            rank=rank,
            stage=spec.index,
            stages=len(stages),
            ranks=tuple(spec.ranks),
            before=tuple(stages[spec.index - 1].ranks) if spec.index else (),
            after=tuple(stages[spec.index + 1].ranks) if spec.index + 1 < len(stages) else (),
            workers_from_here=sum(len(s.ranks) for s in stages[spec.index :]),
        )
        for spec in stages
        for rank in spec.ranks
    ]


def placement(pipeline: Pipeline, rank: int) -> Placement:
    return placements(pipeline)[rank]


def world_size(pipeline: Pipeline) -> int:
    """The processes the pipeline runs as: every stage's replicas."""
    return sum(len(s.ranks) for s in pipeline.stages)


def replicated(pipeline: Pipeline) -> bool:
    return any(len(s.ranks) > 1 for s in pipeline.stages)


def check_ranks(pipeline: Pipeline) -> None:
    """Each stage's ranks are the next consecutive ones: the rule every part relies on."""
    first = 0
    for spec in pipeline.stages:
        wanted = tuple(range(first, first + len(spec.ranks)))
        if not spec.ranks or tuple(spec.ranks) != wanted:
            raise VpipeError(
                f"pipeline.yaml: stage {spec.index} runs on ranks {list(spec.ranks)}; each stage's "
                f"replicas take the next consecutive ranks (here {list(wanted) or [first]}): "
                "regenerate it with vpipe-gen"
            )
        first += len(spec.ranks)
