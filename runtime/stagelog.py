"""run/stage_<k>.yaml: what one stage's process measured about itself, for `--report` and the
benchmarks. Written by the stage when its run ends; read back field by field like every vpipe
file, so a damaged one names itself instead of failing inside the report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from vpipe.common.records import Bytes, Count, NonNegative, Positive, decode
from vpipe.common.yamlfile import check_header, load_yaml, save_yaml

SCHEMA_VERSION = 2  # 2 added cores
REMEDY = "train again to write it: vpipe-train <pipeline.yaml>"


@dataclass(frozen=True)
class StageLog:
    peak_weight_versions: Count  # weight versions held at once (asp: the stash's depth)
    skipped_steps: Count  # by --skip-nonfinite
    seconds: NonNegative  # the training loop's wall time
    peak_memory_bytes: Bytes | None  # CUDA: the allocator's peak; CPU: --measure-memory's count
    # --report times a stage on the CPU by its CPU time when it computed on one thread or when
    # these processes outnumbered the cores
    local_processes: Positive
    cpu_count: Positive | None
    threads: Positive
    # the cores its threads could run on at the end (--bind-cores: its own); None: not Linux
    cores: tuple[int, ...] | None
    device: str  # "cpu" or "cuda"
    # a replicated stage's process: sha256 of its final weights and buffers, the same on every
    # replica of the stage (`runtime.replicas.weights_digest`); None on an unreplicated stage
    weights_sha256: str | None = None


def save_stage_log(log: StageLog, path: Path) -> None:
    save_yaml({"schema_version": SCHEMA_VERSION, **asdict(log)}, path)


def load_stage_log(path: Path) -> StageLog:
    data = load_yaml(path, "stage log")
    check_header(data, SCHEMA_VERSION, str(path), "stage log", REMEDY)
    body = {k: v for k, v in data.items() if k != "schema_version"}
    return decode(StageLog, body, str(path), "stage log", REMEDY)
