"""Hugging Face models through vpipe, each family end to end, measured.

    python benchmarks/huggingface.py [--families gpt2 bert llama t5] [--steps 200]

For each bundled Hugging Face model (`vpipe.models.hf_*`, built from a config, synthetic data):
capture it both ways a reader wants to compare (the raw torch.export graph's node count, and
vpipe's graph grouped into the model's layers) and time the capture; profile it with one
thread, plan it (the command's wall time), generate it, and train it under synchronous `1f1b`
and under asynchronous `asp` (the plan's default) with AdamW. Prints one row per family: the
capture route and time, nodes before and after grouping, stages, plan time, samples/s of each
schedule (the final `throughput:` figure: the steady state after warm-up) and the loss at the
first and the last step. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vpipe.codegen.cli import main as generate_main
from vpipe.common.capture import capture
from vpipe.common.modelfile import load_model_file
from vpipe.planner.cli import main as plan_main
from vpipe.profiler.cli import main as profile_main
from vpipe.profiler.schema import load_profile
from vpipe.runtime.cli import main as train_main

STAGES = {"gpt2": 2, "bert": 4, "llama": 2, "t5": 2}
BATCH = 4


@dataclass(frozen=True)
class Row:
    family: str
    route: str
    capture_s: float
    export_nodes: int
    nodes: int
    stages: int
    plan_s: float
    sync_samples_per_s: float
    asp_samples_per_s: float
    sync_loss: tuple[float, float]  # first and last step
    asp_loss: tuple[float, float]


def measure(family: str, work: Path, steps: int) -> Row:
    module = f"vpipe.models.hf_{family}"
    model_file = load_model_file(module)
    torch.manual_seed(0)
    model = model_file.build_model().train()
    batch = model_file.batch(BATCH, 0)
    export_nodes = len(
        torch.export.export(model, batch.args, batch.kwargs, strict=False).graph.nodes
    )
    start = time.perf_counter()
    captured = capture(model, batch)
    capture_s = time.perf_counter() - start

    profile = work / "profile.yaml"
    argv = [module, "-o", str(profile), "-q", "--device", "cpu", "--batch-size", str(BATCH)]
    assert profile_main([*argv, "--threads", "1"]) == 0
    nodes = len(load_profile(profile).nodes)
    runs = {}
    plan_s = 0.0
    for schedule in ("1f1b", "asp"):
        plan = work / f"plan_{schedule}.yaml"
        start = time.perf_counter()
        argv = [
            str(profile),
            "--gpus",
            str(STAGES[family]),
            "--stages",
            str(STAGES[family]),
            "--schedule",
            schedule,
        ]
        assert plan_main([*argv, "-o", str(plan), "-q"]) == 0
        plan_s = max(plan_s, time.perf_counter() - start)
        out = work / schedule
        assert generate_main([str(plan), "-o", str(out), "-q"]) == 0
        train = [str(out / "pipeline.yaml"), "--steps", str(steps), "--threads", "1"]
        assert train_main([*train, "--optimizer", "adamw", "--print-every", str(10**9)]) == 0
        runs[schedule] = _metrics(out / "run" / "metrics.csv")
    return Row(
        family,
        captured.route,
        capture_s,
        export_nodes,
        nodes,
        STAGES[family],
        plan_s,
        runs["1f1b"][0],
        runs["asp"][0],
        runs["1f1b"][1],
        runs["asp"][1],
    )


def _metrics(path: Path) -> tuple[float, tuple[float, float]]:
    with open(path) as file:
        rows = list(csv.DictReader(file))
    return float(rows[-1]["samples_per_s"]), (float(rows[0]["loss"]), float(rows[-1]["loss"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(STAGES), choices=list(STAGES))
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families:
            work = Path(tmp) / family
            work.mkdir()
            rows.append(measure(family, work, args.steps))
    print(
        f"{'family':<7} {'route':<7} {'capture s':>9} {'export nodes':>12} {'grouped':>7} "
        f"{'stages':>6} {'plan s':>6} {'1f1b samples/s':>14} {'asp samples/s':>13} "
        f"{'1f1b loss first -> last':>24} {'asp loss first -> last':>23}"
    )
    for r in rows:
        print(
            f"{r.family:<7} {r.route:<7} {r.capture_s:>9.2f} {r.export_nodes:>12} {r.nodes:>7} "
            f"{r.stages:>6} {r.plan_s:>6.2f} {r.sync_samples_per_s:>14.1f} "
            f"{r.asp_samples_per_s:>13.1f} "
            f"{r.sync_loss[0]:>10.4f} -> {r.sync_loss[1]:<10.4f} "
            f"{r.asp_loss[0]:>10.4f} -> {r.asp_loss[1]:<10.4f}"
        )
    print(
        f"{args.steps} steps each, batch {BATCH}, AdamW at vpipe-train's default lr, "
        "one thread a stage"
    )


if __name__ == "__main__":
    main()
